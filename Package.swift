// swift-tools-version: 6.0
import PackageDescription

let librarySettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    // The runtime's state is confined to one thread (rule 6) and never accessed
    // re-entrantly inside an access; dynamic exclusivity checks cost a third of a
    // handle's acquire/release on the hot path.
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "scopelua",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "scopelua", targets: ["scopelua"]),
        .library(name: "ScopeLua", targets: ["ScopeLua", "ScopeLuaRepl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // `scopelua serve` and --metrics-listen: the HTTP server, its start-up and
        // shutdown, and the Prometheus metrics (swift-prometheus' registry and text format;
        // swift-metrics' API would drop the metrics' help texts, see MetricsExporter).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        // Hummingbird's own I/O library, named for one call: its event loops made Swift
        // concurrency's executor (Server.runTasksOnEventLoops).
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
    ],
    targets: [
        // Debian's liblua5.4-dev, found through pkg-config.
        .systemLibrary(
            name: "CLua",
            pkgConfig: "lua5.4",
            providers: [.apt(["liblua5.4-dev"])]
        ),
        // Debian's libsqlite3-dev: the C library itself, for full control over
        // statement lifetimes (prepare, reset, finalize) from the runtime.
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        // Debian's libhiredis-dev (0.14.1 on bookworm): the redis module's client. Only
        // ScopeLuaResources uses it; no Redis client exists among the Swift packages here.
        // Not through pkg-config: hiredis.pc's cflags carry -D_FILE_OFFSET_BITS=64, which
        // SwiftPM refuses with a warning on every build; the header is found as
        // <hiredis/hiredis.h> on the default path and the module map links the library.
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // Debian's libedit-dev: line editing and history for the REPL.
        .systemLibrary(
            name: "CEdit",
            pkgConfig: "libedit",
            providers: [.apt(["libedit-dev"])]
        ),
        // The REPL's terminal plumbing on libedit (history file, completion, Ctrl-C).
        .target(name: "CLineEdit", dependencies: ["CEdit"]),
        // The only code allowed to raise Lua errors (longjmp): trampolines,
        // protected helpers and the allocator.
        .target(name: "CScopeLua", dependencies: ["CLua"]),
        // The layers (docs/ARCHITECTURE.md, "Layers"); each may use only the ones below it.
        // The core: the Lua bridge's Swift half, the runtime, scopes, resources and handles,
        // the core bindings (scope, defer, with_resource, log) and the module mechanism.
        .target(
            name: "ScopeLuaCore",
            dependencies: ["CLua", "CScopeLua"],
            swiftSettings: librarySettings
        ),
        // One folder per resource kind (files, timers, SQLite, shared dictionaries, Redis)
        // and JSON, each a module that installs itself into a runtime.
        .target(
            name: "ScopeLuaResources",
            dependencies: ["ScopeLuaCore", "CLua", "CScopeLua", "CSQLite", "CHiredis"],
            swiftSettings: librarySettings
        ),
        // The pipeline engine, the script runner, and what a standard runtime installs.
        .target(
            name: "ScopeLua",
            dependencies: ["ScopeLuaCore", "ScopeLuaResources", "CLua", "CScopeLua"],
            swiftSettings: librarySettings
        ),
        // The REPL's logic (no terminal).
        .target(
            name: "ScopeLuaRepl",
            dependencies: ["ScopeLua", "CLua", "CScopeLua"],
            swiftSettings: librarySettings
        ),
        // `scopelua serve`: the HTTP server (Hummingbird) on its own threads, feeding a run
        // through a bounded queue; metrics and the live resource view.
        .target(
            name: "ScopeLuaServe",
            dependencies: [
                "ScopeLua", "CScopeLua",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: librarySettings
        ),
        .executableTarget(
            name: "scopelua",
            dependencies: [
                "ScopeLua",
                "ScopeLuaRepl",
                "ScopeLuaServe",
                "CLineEdit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .testTarget(
            name: "ScopeLuaTests",
            // The executable is a dependency so that end-to-end tests can run it.
            dependencies: ["ScopeLuaCore", "ScopeLuaResources", "ScopeLua", "ScopeLuaRepl", "ScopeLuaServe", "CLua", "scopelua"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
