"""``duro.edge``: the HTTP/WebSocket entry of one region, and the gRPC ``Gateway``.

Where a request goes (one function per hop)::

    http.py     EdgeHttp.handle          static files, the worker's fetch or the default route
                                          /<binding lower>/<name>/<rest> → stub.fetch via Router
    sockets.py  SocketManager.serve      client WebSocket ⇄ one stream per edge-node pair
    gateway.py  GatewayServicer.Invoke   JSON args → stub.call → JSON result or typed error
    main.py     EdgeProcess              config, Router, servers, metrics, graceful stop

See docs/edge.md.
"""
