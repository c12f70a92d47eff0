// Loopback throughput of PAC tensor frames vs a raw TCP socket moving the same bytes.
//
//   build-exec/bench/exec_transport_bench            # writes bench/results/exec_transport.json
//
// BM_TensorFrames: Connection::send_tensor -> Connection::recv_into (32-byte header,
//   tensor header, CRC-32C on both sides, non-blocking send/recv + poll).
// BM_RawSocket:    blocking POSIX send()/recv() of the same number of bytes, no
//   framing, no checksum, no I/O thread: the ceiling on this machine.
// BM_Crc32c:       the checksum alone, to see what part of the gap it explains.
// One sender thread and the benchmark thread as receiver, 127.0.0.1, fixed iteration
// counts (each case moves about 1 GiB).
#include <benchmark/benchmark.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "exec/transport.h"
#include "bench/exec_bench_main.h"

using namespace pac;

static int iterations_for(int64_t bytes) { return int(std::max<int64_t>(64, (int64_t(1) << 30) / bytes)); }

static void BM_TensorFrames(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  const int iters = int(state.max_iterations);
  Listener l("127.0.0.1", 0);
  ConnOptions o;
  o.timeout = Millis(30000);
  o.tag = "bench";
  auto tx = Connection::connect(l.address(), "rx", o);
  auto rx = l.accept(Millis(5000), o);
  std::vector<float> data(size_t(bytes / 4), 1.5f);
  TensorHeader h;
  h.dims = {int64_t(data.size())};
  std::thread sender([&] {
    for (int i = 0; i < iters; i++) tx->send_tensor(MsgType::Activation, h, data.data(), data.size() * 4);
  });
  Frame f;
  for (auto _ : state) {
    rx->recv_into(f);
    benchmark::DoNotOptimize(f.payload.data());
  }
  sender.join();
  state.SetBytesProcessed(state.iterations() * bytes);
}

static void raw_all(int fd, char* p, size_t n, bool send_side) {
  while (n > 0) {
    ssize_t k = send_side ? ::send(fd, p, n, MSG_NOSIGNAL) : ::recv(fd, p, n, 0);
    if (k <= 0) throw RuntimeError("raw socket benchmark: connection failed");
    p += k;
    n -= size_t(k);
  }
}

static void BM_RawSocket(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  const int iters = int(state.max_iterations);
  int ls = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(ls, 1);
  socklen_t len = sizeof a;
  ::getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  int tx = ::socket(AF_INET, SOCK_STREAM, 0);
  if (::connect(tx, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    state.SkipWithError("connect failed");
    return;
  }
  int rx = ::accept(ls, nullptr, nullptr);
  int one = 1;
  setsockopt(tx, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<char> out(static_cast<size_t>(bytes), 7), in(static_cast<size_t>(bytes), 0);
  std::thread sender([&] {
    for (int i = 0; i < iters; i++) raw_all(tx, out.data(), out.size(), true);
  });
  for (auto _ : state) {
    raw_all(rx, in.data(), in.size(), false);
    benchmark::DoNotOptimize(in.data());
  }
  sender.join();
  ::close(tx);
  ::close(rx);
  ::close(ls);
  state.SetBytesProcessed(state.iterations() * bytes);
}

static void BM_Crc32c(benchmark::State& state) {
  std::vector<char> buf(size_t(state.range(0)), 3);
  for (auto _ : state) benchmark::DoNotOptimize(crc32c(buf.data(), buf.size()));
  state.SetBytesProcessed(state.iterations() * state.range(0));
}

static void register_all() {
  for (int64_t bytes : {int64_t(64) << 10, int64_t(1) << 20, int64_t(16) << 20}) {
    benchmark::RegisterBenchmark("BM_TensorFrames", BM_TensorFrames)
        ->Arg(bytes)->Iterations(iterations_for(bytes))->UseRealTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("BM_RawSocket", BM_RawSocket)
        ->Arg(bytes)->Iterations(iterations_for(bytes))->UseRealTime()->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark("BM_Crc32c", BM_Crc32c)->Arg(1 << 20)->Unit(benchmark::kMicrosecond);
}

int main(int argc, char** argv) { return exec_bench_main(argc, argv, "exec_transport.json", register_all); }
