// Transport, handshake, worker and coordinator over loopback, in one process: the
// worker runs on a thread so its counters can be read. Bad peers (wrong key, garbage,
// oversized frames, silence) must cost only their own connection.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "exec/coordinator.h"
#include "exec/worker.h"

using namespace pac;
using Clock = std::chrono::steady_clock;

static ClusterKey key_of(const std::string& s) { return ClusterKey{s, "test"}; }
static const ClusterKey kKey = key_of("test-cluster-key-0123456789");

// A worker on 127.0.0.1:<any port>, served by a thread, with its log captured.
struct TestWorker {
  std::unique_ptr<Worker> worker;
  std::thread thread;
  std::mutex log_mu;
  std::vector<std::string> log_lines;

  explicit TestWorker(const std::string& id, uint32_t max_payload = kWireDefaultMaxPayload, ClusterKey key = kKey,
                      int max_connections = 64, Millis peer_timeout = Millis(5000),
                      ExecutorFactory factory = executor_create_builtin) {
    WorkerOptions o;
    o.device_id = id;
    o.listen = "127.0.0.1:0";
    o.io_timeout = Millis(2000);
    o.peer_timeout = peer_timeout;
    o.max_payload = max_payload;
    o.max_connections = max_connections;
    o.log = [this](const std::string& l) {
      std::lock_guard<std::mutex> lk(log_mu);
      log_lines.push_back(l);
    };
    worker = std::make_unique<Worker>(o, key, factory);
    worker->start();
    thread = std::thread([this] { worker->serve(); });
  }
  ~TestWorker() {
    worker->stop();
    thread.join();
  }
  std::string address() { return worker->address(); }
  bool logged(const std::string& needle) {
    std::lock_guard<std::mutex> lk(log_mu);
    for (auto& l : log_lines)
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }
  // The worker's counters change on its threads; wait (bounded) for a condition.
  bool wait_stats(const std::function<bool(const WorkerStats&)>& ok) {
    for (int i = 0; i < 200; i++) {
      if (ok(worker->stats())) return true;
      std::this_thread::sleep_for(Millis(10));
    }
    return false;
  }
};

static ConnOptions quick(Millis timeout = Millis(2000)) {
  ConnOptions o;
  o.timeout = timeout;
  o.connect_attempts = 5;
  o.retry_delay = Millis(20);
  return o;
}

// A coordinator-side check that the worker serves: assign an affine stage and ask for
// its (empty) step result.
static void expect_worker_serves(TestWorker& w) {
  Coordinator c({{"w", w.address()}}, kKey, CoordinatorOptions{"coord", Millis(3000), Millis(200), 5});
  c.connect_all();
  json ack = c.assign(0, {{"executor", "affine"}, {"stage", 0}, {"scale", 2.0}, {"shift", 1.0}});
  EXPECT_EQ(ack["device"], "w");
  json r = c.run_step(0, json::object());
  EXPECT_EQ(r["tensors"], 0);
  c.shutdown(false);
}

TEST(ExecTransport, HandshakeThenFramesBothWays) {
  TestWorker w("w");
  auto c = Connection::connect(w.address(), "w", quick());
  handshake_client(*c, kKey, "coordinator", "coord");
  EXPECT_EQ(c->peer().id, "w");
  c->send(MsgType::Heartbeat, "ping-17");
  Frame f = c->recv();
  EXPECT_EQ(f.type(), MsgType::HeartbeatAck);
  EXPECT_EQ(f.payload, "ping-17");  // echoed unchanged
  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.accepted == 1 && s.heartbeats == 1; }));
}

TEST(ExecTransport, WrongKeyIsRefusedAndLoggedWithAddress) {
  TestWorker w("w");
  auto bad = Connection::connect(w.address(), "w", quick());
  try {
    handshake_client(*bad, key_of("not-the-cluster-key-000000"), "coordinator", "intruder");
    FAIL() << "a wrong-key client was let in";
  } catch (const PeerError& e) {
    // The client notices first: the worker's mac does not verify under its key.
    EXPECT_NE(std::string(e.what()).find("failed authentication"), std::string::npos) << e.what();
  }
  // A client that skips its own check and answers anyway is refused by the worker.
  auto bad2 = Connection::connect(w.address(), "w", quick());
  bad2->send_json(MsgType::Hello, {{"role", "coordinator"}, {"id", "intruder"}, {"nonce", auth_nonce()}});
  Frame ch = bad2->recv();
  ASSERT_EQ(ch.type(), MsgType::AuthChallenge);
  bad2->send_json(MsgType::AuthResponse, {{"mac", std::string(64, '0')}});
  Frame err = bad2->recv();
  EXPECT_EQ(err.type(), MsgType::Error);
  EXPECT_NE(err.payload.find("wrong cluster key"), std::string::npos);

  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.refused_auth == 2; }));
  EXPECT_TRUE(w.logged("refused coordinator \"intruder\" from 127.0.0.1:"));
  expect_worker_serves(w);  // the right coordinator is still served
}

TEST(ExecTransport, ClientRefusesAnImpostorServer) {
  TestWorker impostor("w", kWireDefaultMaxPayload, key_of("impostor-key-0123456789"));
  auto c = Connection::connect(impostor.address(), "w", quick());
  try {
    handshake_client(*c, kKey, "coordinator", "coord");
    FAIL() << "talked to a server without the key";
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("device w (127.0.0.1:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("does not hold our cluster key"), std::string::npos) << e.what();
  }
}

TEST(ExecTransport, GarbageBeforeAuthClosesOnlyThatConnection) {
  TestWorker w("w");
  auto raw = Connection::connect(w.address(), "w", quick());
  std::string garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + std::string(40, '\x7f');
  raw->write_raw(garbage.data(), garbage.size());
  char byte;
  // The worker hangs up on us: our next read reports the close, naming the device.
  try {
    raw->read_raw(&byte, 1);
    FAIL() << "worker kept a garbage connection open";
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("device w (127.0.0.1:"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.refused_auth == 1; }));
  EXPECT_TRUE(w.logged("bad magic"));
  expect_worker_serves(w);
}

TEST(ExecTransport, BadFramesAfterAuthCloseTheConnectionAndWorkerServesOn) {
  TestWorker w("w", /*max_payload=*/1 << 20);
  {
    // Authenticated, then a frame with a flipped payload byte.
    auto c = Connection::connect(w.address(), "w", quick());
    handshake_client(*c, kKey, "coordinator", "coord");
    std::string f = frame_encode(MsgType::Heartbeat, 0, 2, "hello");  // seq 2: after hello and auth_response
    f[kWireHeaderBytes] ^= 1;
    c->write_raw(f.data(), f.size());
    EXPECT_THROW(c->recv(), PeerError);  // closed by the worker
  }
  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.bad_frames == 1; }));
  EXPECT_TRUE(w.logged("payload checksum mismatch"));
  {
    // Authenticated, then a header claiming 1 GiB against the worker's 1 MiB limit.
    auto c = Connection::connect(w.address(), "w", quick());
    handshake_client(*c, kKey, "coordinator", "coord");
    std::string f = frame_encode(MsgType::Activation, 0, 2, "");
    uint32_t len = 1u << 30;
    for (int i = 0; i < 4; i++) f[12 + i] = char((len >> (8 * i)) & 0xff);
    uint32_t hc = crc32c(f.data(), 28);
    for (int i = 0; i < 4; i++) f[28 + i] = char((hc >> (8 * i)) & 0xff);
    c->write_raw(f.data(), kWireHeaderBytes);
    EXPECT_THROW(c->recv(), PeerError);
  }
  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.bad_frames == 2; }));
  EXPECT_TRUE(w.logged("payload length 1073741824 over the limit 1048576"));
  expect_worker_serves(w);
}

TEST(ExecTransport, ConnectionCapRefusesTheFloodAndRecovers) {
  TestWorker w("w", kWireDefaultMaxPayload, kKey, /*max_connections=*/2);
  auto idle1 = Connection::connect(w.address(), "w", quick());
  auto idle2 = Connection::connect(w.address(), "w", quick());
  // Both idle connections are being served (waiting for a hello) before the third comes.
  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.open_connections == 2; }));
  auto third = Connection::connect(w.address(), "w", quick());
  char byte;
  EXPECT_THROW(third->read_raw(&byte, 1), PeerError);  // closed on accept
  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.refused_busy == 1; }));
  EXPECT_TRUE(w.logged("2 connections already open"));
  // The flood goes away; its threads are reaped and the worker serves again.
  idle1->close();
  idle2->close();
  EXPECT_TRUE(w.wait_stats([](const WorkerStats& s) { return s.refused_auth == 2 && s.open_connections == 0; }));
  expect_worker_serves(w);
}

TEST(ExecTransport, RecvTimeoutNamesThePeerAndStaysBounded) {
  Listener l("127.0.0.1", 0);
  auto client = Connection::connect(l.address(), "silent7", quick(Millis(300)));
  auto server = l.accept(Millis(2000), quick());
  ASSERT_TRUE(server);
  // try_recv: nothing arrives, connection stays usable.
  EXPECT_FALSE(client->try_recv(Millis(50)).has_value());
  EXPECT_TRUE(client->is_open());
  Clock::time_point t0 = Clock::now();
  try {
    client->recv();
    FAIL() << "recv returned without a frame";
  } catch (const PeerError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("timed out after 0.3 s"), std::string::npos) << m;
    EXPECT_NE(m.find("device silent7 (" + l.address() + ")"), std::string::npos) << m;
    EXPECT_TRUE(e.timed_out);
    EXPECT_EQ(e.peer_id, "silent7");
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_GE(s, 0.25);
  EXPECT_LT(s, 2.0);  // generous bound; the point is "no hang"
}

TEST(ExecTransport, HangUpAndRefusedConnectAreNamed) {
  Listener l("127.0.0.1", 0);
  auto client = Connection::connect(l.address(), "w9", quick());
  auto server = l.accept(Millis(2000), quick());
  ASSERT_TRUE(server);
  // A partial header followed by a hang-up: the frame is lost, the error says so.
  server->write_raw("PAC", 3);
  server->close();
  try {
    client->recv();
    FAIL();
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("connection closed by device w9"), std::string::npos) << e.what();
    EXPECT_FALSE(e.timed_out);
  }
  std::string addr = l.address();
  l.close();
  std::this_thread::sleep_for(Millis(50));
  try {
    Connection::connect(addr, "gone3", quick());
    FAIL();
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot connect to device gone3 (" + addr + ") [control] after 5 attempts"),
              std::string::npos)
        << e.what();
  }
}

TEST(ExecTransport, TensorFramesArriveIntact) {
  Listener l("127.0.0.1", 0);
  auto a = Connection::connect(l.address(), "b", quick());
  auto b = l.accept(Millis(2000), quick());
  std::vector<float> x(100000);
  for (size_t i = 0; i < x.size(); i++) x[i] = float(i) * 0.5f;
  TensorHeader h;
  h.dims = {100, 1000};
  h.micro_batch = 9;
  a->send_tensor(MsgType::Gradient, h, x.data(), x.size() * 4, kFlagEndOfStream);
  Frame f = b->recv();
  EXPECT_EQ(f.type(), MsgType::Gradient);
  EXPECT_EQ(f.header.flags, kFlagEndOfStream);
  TensorView v = tensor_payload_decode(f.payload);
  EXPECT_EQ(v.header.micro_batch, 9u);
  ASSERT_EQ(v.bytes, x.size() * 4);
  EXPECT_EQ(std::memcmp(v.data, x.data(), v.bytes), 0);
}

TEST(ExecTransport, AddressParsingNamesTheOption) {
  std::string h;
  uint16_t p;
  address_parse("127.0.0.1:8080", "--listen", &h, &p);
  EXPECT_EQ(h, "127.0.0.1");
  EXPECT_EQ(p, 8080);
  address_parse("[::1]:9", "--listen", &h, &p);
  EXPECT_EQ(h, "::1");
  EXPECT_THROW(address_parse("127.0.0.1", "--listen", &h, &p), InputError);
  EXPECT_THROW(address_parse("host:99999", "--listen", &h, &p), InputError);
  try {
    address_parse("host:8o", "--listen", &h, &p);
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--listen: port \"8o\" is not a number"), std::string::npos);
  }
}

TEST(ExecCoordinator, BusyCoordinatorIsKeptAliveByBackgroundHeartbeats) {
  // The worker drops peers silent for 600 ms; the coordinator does not wait on anything
  // for 1.5 s, yet its heartbeat thread keeps the link up.
  TestWorker w("w", kWireDefaultMaxPayload, kKey, 64, Millis(600));
  Coordinator c({{"w", w.address()}}, kKey, CoordinatorOptions{"coord", Millis(3000), Millis(100), 5});
  c.connect_all();
  std::this_thread::sleep_for(Millis(1500));
  // Had the worker dropped us, this would throw a PeerError naming it.
  json ack = c.assign(0, {{"executor", "affine"}, {"stage", 0}, {"scale", 1.0}, {"shift", 0.0}});
  EXPECT_EQ(ack["device"], "w");
  EXPECT_FALSE(w.logged("no frame from"));
  // Heartbeats every 100 ms over 1.5 s: at least 5 were answered even on a loaded machine.
  EXPECT_GE(w.worker->stats().heartbeats, 5);
  c.shutdown(false);
}

TEST(ExecCoordinator, QuietWorkerToWorkerStreamOutlivesThePeerTimeout) {
  // w1 drops coordinators silent for 600 ms, but the w0 -> w1 stream, quiet for 1.2 s
  // between two micro-batches (as between epochs), must stay usable.
  TestWorker w0("w0", kWireDefaultMaxPayload, kKey, 64, Millis(600));
  TestWorker w1("w1", kWireDefaultMaxPayload, kKey, 64, Millis(600));
  Coordinator c({{"w0", w0.address()}, {"w1", w1.address()}}, kKey,
                CoordinatorOptions{"coord", Millis(3000), Millis(100), 5});
  c.connect_all();
  c.assign(0, {{"executor", "affine"}, {"stage", 0}, {"scale", 3.0}, {"shift", 0.0},
               {"next", {{"id", "w1"}, {"address", w1.address()}}}});
  c.assign(1, {{"executor", "affine"}, {"stage", 1}, {"scale", 1.0}, {"shift", 0.5}});
  TensorHeader h;
  h.dims = {1};
  for (int mb = 0; mb < 2; mb++) {
    if (mb == 1) std::this_thread::sleep_for(Millis(1200));
    float x = float(mb + 1);
    h.micro_batch = uint32_t(mb);
    c.connection(0).send_tensor(MsgType::Activation, h, &x, 4);
    TensorView v = tensor_payload_decode(c.wait_from(1, MsgType::Activation, Millis(3000)).payload);
    float y;
    std::memcpy(&y, v.data, 4);
    EXPECT_EQ(y, 3.0f * x + 0.5f) << "micro-batch " << mb;  // closed form 3x + 0.5
  }
  c.shutdown(false);
}

// A step that computes for at least `min_ms`: sum of 1..n, repeated until the time
// has passed. Real work with a closed-form answer, and long enough to outlast the
// coordinator's heartbeat timeout.
class LongSumExecutor : public StageExecutor {
 public:
  std::string name() const override { return "long-sum"; }
  json on_assign(const JsonIn& a, WorkerContext& ctx) override { return {{"device", ctx.device_id()}}; }
  void on_tensor(const PeerName&, MsgType, const TensorView&, uint32_t, WorkerContext&) override {
    throw InputError("long-sum takes no tensors");
  }
  json run_step(const JsonIn& step, WorkerContext&) override {
    int64_t n = step.integer("n", 1, 1 << 30);
    int64_t min_ms = step.integer("min_ms", 0, 60000);
    auto t0 = std::chrono::steady_clock::now();
    int64_t sum = 0, rounds = 0;
    do {
      sum = 0;
      for (int64_t i = 1; i <= n; i++) sum += i;
      rounds++;
    } while (std::chrono::steady_clock::now() - t0 < Millis(min_ms));
    return {{"sum", sum}, {"rounds", rounds}};
  }
};

TEST(ExecCoordinator, HeartbeatsAreAnsweredDuringALongStep) {
  ExecutorFactory factory = [](const std::string& name) -> std::unique_ptr<StageExecutor> {
    if (name == "long-sum") return std::make_unique<LongSumExecutor>();
    return executor_create_builtin(name);
  };
  TestWorker w("w", kWireDefaultMaxPayload, kKey, 64, Millis(5000), factory);
  // Heartbeat timeout 600 ms; the step runs at least 1.5 s. The worker runs steps off
  // its connection thread, so heartbeats keep being answered.
  Coordinator c({{"w", w.address()}}, kKey, CoordinatorOptions{"coord", Millis(600), Millis(100), 5});
  c.connect_all();
  c.assign(0, {{"executor", "long-sum"}});
  json r = c.run_step(0, {{"n", 100000}, {"min_ms", 1500}}, Millis(20000));
  // Closed form: 1 + 2 + ... + n = n (n + 1) / 2 = 5000050000 for n = 100000.
  EXPECT_EQ(r["sum"].get<int64_t>(), int64_t(5000050000));
  EXPECT_GE(r["rounds"].get<int64_t>(), 1);
  EXPECT_GE(w.worker->stats().heartbeats, 5);  // answered while the step ran
  c.shutdown(false);
}

TEST(ExecCoordinator, AffinePipelineOfThreeInProcessWorkers) {
  TestWorker w0("w0"), w1("w1"), w2("w2");
  Coordinator c({{"w0", w0.address()}, {"w1", w1.address()}, {"w2", w2.address()}}, kKey,
                CoordinatorOptions{"coord", Millis(3000), Millis(200), 5});
  c.connect_all();
  c.assign(0, {{"executor", "affine"}, {"stage", 0}, {"scale", 2.0}, {"shift", 1.0},
               {"next", {{"id", "w1"}, {"address", w1.address()}}}});
  c.assign(1, {{"executor", "affine"}, {"stage", 1}, {"scale", -0.5}, {"shift", 3.0},
               {"next", {{"id", "w2"}, {"address", w2.address()}}}});
  c.assign(2, {{"executor", "affine"}, {"stage", 2}, {"scale", 4.0}, {"shift", -2.0}});
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); i++) x[i] = float(i) - 500;
  TensorHeader h;
  h.dims = {int64_t(x.size())};
  h.micro_batch = 0;
  c.connection(0).send_tensor(MsgType::Activation, h, x.data(), x.size() * 4);
  Frame f = c.wait_from(2, MsgType::Activation, Millis(5000));
  TensorView v = tensor_payload_decode(f.payload);
  ASSERT_EQ(v.header.numel(), int64_t(x.size()));
  std::vector<float> y(x.size());
  std::memcpy(y.data(), v.data, v.bytes);
  for (size_t i = 0; i < x.size(); i++) {
    // Closed form: 4 * (-0.5 * (2x + 1) + 3) - 2 = -4x + 8 (exact in fp32 for these x).
    EXPECT_EQ(y[i], -4.0f * x[i] + 8.0f) << "element " << i;
  }
  // A bad assignment comes back as an error naming the device; the link stays up.
  try {
    c.assign(1, {{"executor", "affine"}, {"stage", 1}, {"scale", "two"}, {"shift", 0}});
    FAIL();
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("device w1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("$.scale"), std::string::npos) << e.what();
  }
  EXPECT_EQ(c.run_step(2, json::object())["tensors"], 1);
  c.shutdown(false);
}
