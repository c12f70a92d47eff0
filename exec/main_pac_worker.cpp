// pac-worker: the process that runs on every device (docs/runtime.md).
//
//   pac-worker --listen HOST:PORT [--key-file F] [--device-id ID]
//
// Prints "pac-worker <id> listening on HOST:PORT" on stdout once bound (a parent that
// passed port 0 reads the real port from it), then serves until a coordinator sends
// Shutdown{"exit":true}, or --idle-exit-s passes with no coordinator connected.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "src/common/blas.h"
#include "src/common/heap.h"
#include "src/common/cli.h"
#include "exec/executors.h"
#include "exec/worker.h"
#include "src/llm/memory.h"

int main(int argc, char** argv) {
  pac::blas_kernel_fix(argv);
  pac::compute_heap_pin();
  return pac::run_main("pac-worker", [&]() -> int {
    CLI::App app{"PAC worker: serves one device for a coordinator (pac-run)"};
    std::string listen, key_file, device_id;
    double peer_timeout_s = 30, io_timeout_s = 10, idle_exit_s = 0;
    double max_payload_mib = 256;
    int max_connections = 64;
    app.add_option("--listen", listen, "HOST:PORT to listen on (port 0: any free port)")->required();
    app.add_option("--key-file", key_file,
                   "file holding the cluster key (else $PAC_CLUSTER_KEY_FILE, else $PAC_CLUSTER_KEY)");
    app.add_option("--device-id", device_id, "this device's id in the plan (default: worker-<port>)");
    app.add_option("--peer-timeout-s", peer_timeout_s, "drop a coordinator silent this long")
        ->check(CLI::PositiveNumber);
    app.add_option("--io-timeout-s", io_timeout_s, "limit for each send, frame body and connect attempt")
        ->check(CLI::PositiveNumber);
    app.add_option("--idle-exit-s", idle_exit_s, "exit after this long with no coordinator (0: never)")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--max-payload-mib", max_payload_mib, "largest frame payload accepted, MiB")
        ->check(CLI::Range(0.001, 4095.0));
    app.add_option("--max-connections", max_connections, "connections served at once; more are closed")
        ->check(CLI::Range(2, 100000));
    if (int rc = pac::cli_parse(app, argc, argv); rc >= 0) return rc;
    // Count tensor bytes from the start (reports' peak_tensor_bytes; no tensor exists yet).
    pac::torch_memory_tracking_enable();
    pac::WorkerOptions opt;
    opt.listen = listen;
    opt.peer_timeout = pac::Millis(static_cast<long>(peer_timeout_s * 1000));
    opt.io_timeout = pac::Millis(static_cast<long>(io_timeout_s * 1000));
    opt.idle_exit = pac::Millis(static_cast<long>(idle_exit_s * 1000));
    opt.max_payload = static_cast<uint32_t>(max_payload_mib * 1024 * 1024);
    opt.max_connections = max_connections;
    pac::ClusterKey key = pac::cluster_key_load(key_file);  // InputError -> exit 2
    std::string host;
    uint16_t port = 0;
    pac::address_parse(listen, "--listen", &host, &port);
    opt.device_id = device_id;
    pac::Worker worker(opt, key, pac::executor_create_runtime);
    worker.start();
    if (device_id.empty()) {
      // Name it after the port it actually got, so logs of several workers differ.
      std::string bound = worker.address();
      opt.device_id = "worker-" + bound.substr(bound.rfind(':') + 1);
      worker.set_device_id(opt.device_id);
    }
    std::printf("pac-worker %s listening on %s\n", opt.device_id.c_str(), worker.address().c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "[pac-worker %s] cluster key from %s\n", opt.device_id.c_str(), key.source.c_str());
    worker.serve();
    return 0;
  });
}
