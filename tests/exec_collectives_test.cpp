// Collectives over c10d ProcessGroupGloo, Gloo style: N ranks as threads of one
// process, each result compared with its closed form.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <atomic>
#include <functional>
#include <thread>

#include "exec/collectives.h"
#include "exec/transport.h"

using namespace pac;

// Runs body(rank) on `n` threads; rethrows the first failure's message in the test.
static void run_ranks(int n, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(n));
  for (int r = 0; r < n; r++)
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; r++) EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
}

static CollectiveOptions opts(const std::string& tag, int ms = 10000) {
  CollectiveOptions o;
  o.tag = tag;
  o.timeout = std::chrono::milliseconds(ms);
  return o;
}

TEST(ExecCollectives, AllReduceSumAndMeanOverFourThreadRanks) {
  const int n = 4, len = 1000;
  CollectiveStore store = CollectiveStore::in_process();
  std::vector<std::vector<float>> sums(n), means(n);
  std::vector<at::Tensor> tsum(n);
  run_ranks(n, [&](int r) {
    CollectiveGroup g(store, "dp", r, n, opts("join"));
    std::vector<float> v(len);
    for (int i = 0; i < len; i++) v[size_t(i)] = float(10 * r + i);
    g.allreduce(v, ReduceKind::Sum, opts("grads sum"));
    sums[size_t(r)] = v;
    for (int i = 0; i < len; i++) v[size_t(i)] = float(10 * r + i);
    g.allreduce(v, ReduceKind::Mean, opts("grads mean"));
    means[size_t(r)] = v;
    at::Tensor t = torch::full({3, 5}, double(r + 1));
    g.allreduce(t, ReduceKind::Sum, opts("tensor sum"));
    tsum[size_t(r)] = t;
  });
  for (int r = 0; r < n; r++) {
    ASSERT_EQ(sums[size_t(r)].size(), size_t(len));
    for (int i = 0; i < len; i++) {
      // Closed form: sum over r=0..3 of (10r + i) = 10 * 6 + 4i = 60 + 4i; mean = 15 + i.
      EXPECT_EQ(sums[size_t(r)][size_t(i)], 60.0f + 4.0f * i);
      EXPECT_EQ(means[size_t(r)][size_t(i)], 15.0f + i);
    }
    // 1 + 2 + 3 + 4 = 10 in every element.
    EXPECT_TRUE(torch::equal(tsum[size_t(r)], torch::full({3, 5}, 10.0))) << "rank " << r;
  }
}

TEST(ExecCollectives, AllGatherAndBroadcastOverFourThreadRanks) {
  const int n = 4;
  CollectiveStore store = CollectiveStore::in_process();
  std::vector<std::vector<std::vector<float>>> gathered(n);
  std::vector<std::vector<float>> bcast(n);
  run_ranks(n, [&](int r) {
    CollectiveGroup g(store, "switch", r, n, opts("join"));
    // Rank r contributes [r, r*r, -r].
    gathered[size_t(r)] = g.allgather(std::vector<float>{float(r), float(r * r), float(-r)}, opts("side weights"));
    std::vector<float> v = {float(r), float(r) + 0.5f};
    g.broadcast(v, /*root=*/2, opts("weights from rank 2"));
    bcast[size_t(r)] = v;
    g.barrier(opts("end"));
  });
  for (int r = 0; r < n; r++) {
    ASSERT_EQ(gathered[size_t(r)].size(), size_t(n));
    for (int q = 0; q < n; q++)
      EXPECT_EQ(gathered[size_t(r)][size_t(q)], (std::vector<float>{float(q), float(q * q), float(-q)}));
    // Everyone ends with root 2's values.
    EXPECT_EQ(bcast[size_t(r)], (std::vector<float>{2.0f, 2.5f}));
  }
}

TEST(ExecCollectives, TwoGroupsShareOneTcpStore) {
  // Two stage groups of 2 ranks each over one TCPStore hosted by rank 0: the group
  // name keeps their rendezvous keys apart.
  Listener probe("127.0.0.1", 0);  // find a free port, then free it for the store
  uint16_t port = probe.port();
  probe.close();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::vector<float> result(4);
  std::atomic<bool> host_ready{false};
  CollectiveStore host_store;
  run_ranks(4, [&](int r) {
    CollectiveStore s;
    if (r == 0) {
      s = CollectiveStore::tcp("127.0.0.1", port, true, 4, std::chrono::milliseconds(10000));
      host_ready = true;
    } else {
      for (int i = 0; i < 500 && !host_ready; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      s = CollectiveStore::tcp("127.0.0.1", port, false, 4, std::chrono::milliseconds(10000));
    }
    std::string group = r < 2 ? "stage0" : "stage1";
    CollectiveGroup g(s, group, r % 2, 2, opts("join"));
    std::vector<float> v = {float(r + 1)};
    g.allreduce(v, ReduceKind::Sum, opts("grads " + group));
    result[size_t(r)] = v[0];
    g.barrier(opts("end"));  // keep rank 0's store alive until every rank is done
  });
  // stage0: 1 + 2 = 3; stage1: 3 + 4 = 7.
  EXPECT_EQ(result, (std::vector<float>{3, 3, 7, 7}));
}

TEST(ExecCollectives, MissingRankTimesOutWithANamedError) {
  const int n = 3;
  CollectiveStore store = CollectiveStore::in_process();
  std::vector<std::string> errors(n);
  std::vector<double> waited(n, 0);
  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < n; r++)
    threads.emplace_back([&, r] {
      try {
        CollectiveGroup g(store, "dp", r, n, opts("join"));
        if (r == 2) {
          // Rank 2 stays alive (its pairs stay open) but never calls the all-reduce,
          // so the others see a real timeout, not a hang-up. Bounded wait.
          for (int i = 0; i < 1000 && finished < 2; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
          return;
        }
        std::vector<float> v(16, 1.0f);
        auto t0 = std::chrono::steady_clock::now();
        try {
          g.allreduce(v, ReduceKind::Sum, opts("grads step 7", 500));
        } catch (const std::exception& e) {
          errors[size_t(r)] = e.what();
        }
        waited[size_t(r)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        finished++;
      } catch (const std::exception& e) {
        errors[size_t(r)] = std::string("unexpected: ") + e.what();
        finished++;
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; r++) {
    const std::string& m = errors[size_t(r)];
    EXPECT_NE(m.find("allreduce 'grads step 7' (group dp, rank " + std::to_string(r) + "/3) failed (timeout 500 ms)"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("timed out"), std::string::npos) << m;  // c10d: "Operation timed out!", not a hang-up
    // The wait honours the 500 ms timeout and ends well before a hang would.
    EXPECT_GE(waited[size_t(r)], 0.45);
    EXPECT_LT(waited[size_t(r)], 5.0);
  }
}
