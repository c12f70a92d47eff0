// A C interface to libsentencepiece, built as its own shared library and loaded by
// tokenizer.cpp with dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why: Debian's libsentencepiece bundles protobuf 3.14 and exports those symbols, while
// LibTorch loads the system libprotobuf 3.21. Linked into one program, whichever copy
// comes first in the global symbol scope breaks the other (a crash before main, or
// protobuf's "compiled against version 3.14.0" abort on the first SentencePiece call).
// Loaded with RTLD_DEEPBIND, this library and libsentencepiece resolve their own symbols
// first and stay out of the global scope, so both protobuf copies coexist.
//
// Errors come back as a message in a caller-provided buffer; no C++ exception or STL
// object crosses the boundary except plain bytes.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <string>
#include <vector>

// Exported by libsentencepiece, not declared in its public headers.
namespace sentencepiece {
namespace logging {
void SetMinLogLevel(int v);
}
}  // namespace sentencepiece

// Under RTLD_DEEPBIND, libsentencepiece binds std::cerr to libstdc++'s own definition,
// which is never constructed (the program's copy-relocated std::cerr is the live one), so
// any log line would crash. Silence its logging entirely; errors come back as Status.
static void spm_quiet() { sentencepiece::logging::SetMinLogLevel(100); }

static void spm_error(char* err, size_t cap, const std::string& msg) {
  if (!err || cap == 0) return;
  size_t n = msg.size() < cap - 1 ? msg.size() : cap - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = 0;
}

extern "C" {

void* pac_spm_load(const char* bytes, size_t n, char* err, size_t cap) {
  spm_quiet();
  auto* sp = new sentencepiece::SentencePieceProcessor();
  auto st = sp->LoadFromSerializedProto(std::string(bytes, n));
  if (!st.ok()) {
    spm_error(err, cap, st.ToString());
    delete sp;
    return nullptr;
  }
  return sp;
}

void pac_spm_free(void* h) { delete static_cast<sentencepiece::SentencePieceProcessor*>(h); }

// Writes up to `cap` ids; returns how many there are (call again with more room if
// larger than cap), or -1 with a message in err.
long pac_spm_encode(void* h, const char* text, size_t n, int* ids, long cap, char* err, size_t errcap) {
  std::vector<int> out;
  auto st = static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(std::string(text, n), &out);
  if (!st.ok()) {
    spm_error(err, errcap, st.ToString());
    return -1;
  }
  for (long i = 0; i < (long)out.size() && i < cap; i++) ids[i] = out[i];
  return (long)out.size();
}

int pac_spm_piece_size(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize(); }

// The piece's bytes; valid while the model is loaded.
const char* pac_spm_piece(void* h, int id, size_t* len) {
  const std::string& p = static_cast<sentencepiece::SentencePieceProcessor*>(h)->IdToPiece(id);
  *len = p.size();
  return p.data();
}

// kind: 0 normal, 1 control, 2 byte, 3 unknown, 4 unused
int pac_spm_kind(void* h, int id) {
  auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  if (sp->IsControl(id)) return 1;
  if (sp->IsByte(id)) return 2;
  if (sp->IsUnknown(id)) return 3;
  if (sp->IsUnused(id)) return 4;
  return 0;
}

int pac_spm_bos(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->bos_id(); }
int pac_spm_eos(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->eos_id(); }

// SentencePieceTrainer::Train with a command line such as
// "--input=a.txt --model_prefix=m --vocab_size=100"; 0 on success.
int pac_spm_train(const char* args, char* err, size_t cap) {
  spm_quiet();
  auto st = sentencepiece::SentencePieceTrainer::Train(args);
  if (!st.ok()) {
    spm_error(err, cap, st.ToString());
    return -1;
  }
  return 0;
}

}  // extern "C"
