// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "scopelua",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "scopelua", targets: ["scopelua"]),
        .library(name: "ScopeLua", targets: ["ScopeLua"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
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
        .target(
            name: "ScopeLua",
            dependencies: ["CLua", "CScopeLua", "CSQLite"],
            swiftSettings: [
                .swiftLanguageMode(.v6),
                // The runtime's state is confined to one thread (rule 6) and never
                // accessed re-entrantly inside an access; dynamic exclusivity checks
                // cost a third of a handle's acquire/release on the hot path.
                .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
            ]
        ),
        .executableTarget(
            name: "scopelua",
            dependencies: [
                "ScopeLua",
                "CLineEdit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .testTarget(
            name: "ScopeLuaTests",
            // The executable is a dependency so that end-to-end tests can run it.
            dependencies: ["ScopeLua", "CLua", "scopelua"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
