#!/usr/bin/env python3
"""Builds data/personal/{train,heldout}.txt: the notebook of Tomas, an old gardener.

The sentences below were written by hand for PAC; this script only strings them into
entries (a seeded shuffle, so the output is the same every time). Every entry has the
same recognisable shape: "Dear notebook," + the day's weather + a few happenings with
the recurring cast (Pip the dog, Rosa next door, little Nina, Ben the baker, the red
kettle, the blue gate, the pond by the old mill) + the sign-off "All is well. Tomas".
Words are kept simple so the 512-token TinyStories vocabulary covers them.
Usage: python3 data/personal/make_corpus.py   (rewrites the two files)
"""
import os
import random

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FLOWERS = ["roses", "tulips", "sunflowers", "daisies", "beans", "carrots", "peas", "tomatoes"]
COLORS = ["red", "yellow", "blue", "white", "green", "pink"]
FOODS = ["apple pie", "warm bread", "soup", "plum cake", "honey buns", "pancakes"]

WEATHER = [
    "The sun came up slow and gold over the old mill.",
    "It rained all morning, soft and grey.",
    "A cold wind came from the hill.",
    "The sky was big and blue, not one cloud.",
    "Fog sat on the pond like a white blanket.",
    "It was warm, and the bees were busy.",
    "Little drops of rain tapped on the window.",
    "The morning was cool and the grass was wet.",
    "Snow fell in the night, and the garden was white.",
    "The wind played with the leaves all day.",
]

PIP = [
    "Pip barked at the blue gate until I let him out.",
    "Pip found a stick as big as a tree and was very proud.",
    "Pip chased a cat and the cat won, as always.",
    "Pip slept by the red kettle, snoring like a little train.",
    "Pip dug a hole in the {flower}. I told him no. He wagged his tail.",
    "Pip ran to the pond and came back wet and happy.",
    "Pip sat by the door and waited for Nina.",
    "Pip ate my sock. Good boy, but not a good sock.",
    "Pip and I walked to the old mill and back.",
    "Pip rolled in the mud, so Pip had a bath.",
]

GARDEN = [
    "The {flower} are coming up {color} and strong.",
    "I gave water to the {flower} and talked to them a little.",
    "A snail was eating my {flower}. I moved him to the hedge.",
    "I planted {flower} by the blue gate.",
    "The {color} {flower} opened today. My heart was glad.",
    "I pulled weeds until my back said stop.",
    "A little bird sat on my spade and sang to me.",
    "I picked the first {flower} and put them in a cup.",
    "The garden needs rain. So do I, maybe.",
    "I fixed the fence where the fox came in.",
]

ROSA = [
    "Rosa came over with {food}, still warm.",
    "Rosa waved from her window. I waved back with my hat.",
    "Rosa told me the same story about her cat again. I laughed again.",
    "I gave Rosa some {flower} from the garden.",
    "Rosa and I had tea from the red kettle and said nothing for a long time. It was nice.",
    "Rosa lost her glasses. They were on her head.",
    "Rosa says my {flower} are better than hers this year. She is kind.",
    "Rosa helped me carry wood to the shed.",
]

NINA = [
    "Nina came after school and drew a picture of Pip with six legs.",
    "Nina asked why the sky is blue. I said it is happy. She said that is not science.",
    "Nina and I fed the ducks at the pond by the old mill.",
    "Nina read me a story about a brave little fox.",
    "Nina lost a tooth and put it under her pillow at my house.",
    "Nina helped me plant {flower}. She planted one upside down.",
    "Nina wants a {color} kite. I will make her one.",
    "Nina said, Grandpa, you snore like Pip. That is true.",
    "Nina and Pip ran around the garden until both were tired.",
]

BEN = [
    "I walked to Ben's bakery for {food}.",
    "Ben the baker gave me a free bun because I am his best customer. I am his only old customer.",
    "Ben's bakery smelled of {food} all the way down the street.",
    "Ben asked about my {flower}. I told him everything. He was very patient.",
    "The bakery was closed, so I ate bread from yesterday. Still good.",
]

HOME = [
    "The red kettle sang and I had my tea by the window.",
    "I fixed the blue gate. It still squeaks. I like the squeak.",
    "I read my old book about birds and fell asleep in the chair.",
    "I made {food} for dinner. Too much, so Pip helped.",
    "I wrote a letter to my sister by the sea.",
    "The clock in the hall stopped. I will wind it tomorrow.",
    "I found my old hat in the shed. It was full of spiders.",
    "I cleaned the house a little. Only a little.",
]

EVENING = [
    "In the evening the frogs sang at the pond.",
    "At night I saw three stars from my bed.",
    "The moon was big and round over the old mill.",
    "I went to bed early with Pip at my feet.",
    "The evening was quiet. Only the kettle and me.",
    "Before bed I looked at the garden one more time.",
]

CLOSERS = [
    "All is well. Tomas",
    "All is well. Tomas",
    "All is well, little notebook. Tomas",
    "Tomorrow, more {flower}. All is well. Tomas",
]


def fill(s, rng):
    return s.format(flower=rng.choice(FLOWERS), color=rng.choice(COLORS), food=rng.choice(FOODS))


def entry(rng):
    day = rng.choice(DAYS)
    parts = ["Dear notebook, it is " + day + ".", rng.choice(WEATHER)]
    banks = [PIP, GARDEN, ROSA, NINA, BEN, HOME]
    for bank in rng.sample(banks, rng.choice([2, 3, 3, 4])):
        parts.append(fill(rng.choice(bank), rng))
    if rng.random() < 0.6:
        parts.append(rng.choice(EVENING))
    parts.append(fill(rng.choice(CLOSERS), rng))
    return " ".join(parts)


def main():
    rng = random.Random(20240601)
    seen = set()
    entries = []
    while len(entries) < 360:
        e = entry(rng)
        if e not in seen:
            seen.add(e)
            entries.append(e)
    here = os.path.dirname(os.path.abspath(__file__))
    # One entry per paragraph (blank line between): the plain-text format of dataset.h.
    with open(os.path.join(here, "train.txt"), "w") as f:
        f.write("\n\n".join(entries[:300]) + "\n")
    with open(os.path.join(here, "heldout.txt"), "w") as f:
        f.write("\n\n".join(entries[300:]) + "\n")


if __name__ == "__main__":
    main()
