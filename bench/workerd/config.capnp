# workerd running the article's Counter with on-disk Durable Object storage (bench_edge.py fills
# in @PORT@ and @DATA@).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .counterWorker),
    (name = "do-disk", disk = (path = "@DATA@", writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:@PORT@", http = (), service = "main")],
);

const counterWorker :Workerd.Worker = (
  modules = [(name = "worker", esModule = embed "counter.js")],
  compatibilityDate = "2024-09-01",
  durableObjectNamespaces = [(className = "Counter", uniqueKey = "duro-bench-counter", enableSql = true)],
  durableObjectStorage = (localDisk = "do-disk"),
  bindings = [(name = "COUNTER", durableObjectNamespace = "Counter")],
);
