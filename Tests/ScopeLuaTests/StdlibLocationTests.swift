import Foundation
import Testing
@testable import ScopeLuaCore
import ScopeLua

/// The shipped Lua modules are found relative to the running executable (installed or
/// in a clone), never at a path baked in by the build; SCOPELUA_STDLIB and the host's
/// option come first.
@Suite(.timeLimit(testTimeLimit)) struct StdlibLocationTests {
    @Test func anInstalledBinaryLooksUnderItsPrefixsShare() {
        #expect(StdlibLocation.candidates(executable: "/usr/local/bin/scopelua") == ["/usr/local/share/scopelua/stdlib"])
        #expect(StdlibLocation.candidates(executable: "/opt/sl/bin/scopelua") == ["/opt/sl/share/scopelua/stdlib"])
        #expect(StdlibLocation.candidates(executable: "/bin/scopelua") == ["/share/scopelua/stdlib"])
    }

    @Test func aBinaryInACloneFindsTheClonesStdlib() {
        let repo = "/home/dev/scopelua"
        for build in [".build/x86_64-unknown-linux-gnu/release", ".build/debug", ".build-asan/debug", ".build-static/release"] {
            let found = StdlibLocation.candidates(executable: "\(repo)/\(build)/scopelua")
            #expect(found.last == "\(repo)/stdlib", "\(build)")
            #expect(found.count == 2)
        }
        // The innermost build directory counts (a clone inside some other .build-x folder).
        #expect(StdlibLocation.candidates(executable: "/x/.build-old/repo/.build/debug/scopelua").last == "/x/.build-old/repo/stdlib")
        // A folder that merely starts with ".build" is not a build directory.
        #expect(StdlibLocation.candidates(executable: "/x/.buildings/bin/scopelua") == ["/x/.buildings/share/scopelua/stdlib"])
    }

    @Test func aRelativeOrEmptyPathGivesNothing() {
        #expect(StdlibLocation.candidates(executable: "scopelua").isEmpty)
        #expect(StdlibLocation.candidates(executable: "bin/scopelua").isEmpty)
        #expect(StdlibLocation.candidates(executable: "").isEmpty)
        #expect(StdlibLocation.candidates(executable: "/scopelua").isEmpty)
    }

    @Test func theEnvironmentThenTheOptionComeFirst() {
        #expect(StdlibLocation.directory(environment: "/env", explicit: "/option") == "/env")
        #expect(StdlibLocation.directory(environment: nil, explicit: "/option") == "/option")
        // This test process runs from the clone's .build: the clone's stdlib/ (its real
        // path: /proc/self/exe has every symbolic link resolved).
        let clone = URL(fileURLWithPath: repositoryRoot).resolvingSymlinksInPath().path
        #expect(StdlibLocation.directory(environment: nil, explicit: nil) == "\(clone)/stdlib")
    }

    /// The real executable, copied into an installed layout and elsewhere: what it finds
    /// depends on where it is, not on where it was built.
    @Test func theExecutableFindsTheStdlibInstalledNextToIt() throws {
        let prefix = temporaryDirectory()
        let stdlib = "\(prefix)/share/scopelua/stdlib"
        try FileManager.default.createDirectory(atPath: "\(prefix)/bin", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: stdlib, withIntermediateDirectories: true)
        try copyExecutable(scopeluaPath, to: "\(prefix)/bin/scopelua")
        write("return 'installed module'", to: "probe_module.lua", in: stdlib)
        let installed = try runProcess("\(prefix)/bin/scopelua", ["-e", "print((require 'probe_module')); print(package.path)"],
                                       directory: prefix)
        #expect(installed.status == 0)
        #expect(installed.stdout.hasPrefix("installed module\n\(stdlib)/?.lua;\(stdlib)/?/init.lua;"))

        // Elsewhere, with no stdlib beside it, it finds none (the clone it was built in
        // is not remembered).
        let elsewhere = temporaryDirectory()
        try copyExecutable(scopeluaPath, to: "\(elsewhere)/scopelua")
        let bare = try runProcess("\(elsewhere)/scopelua", ["-e", "print(package.path)"], directory: elsewhere)
        #expect(bare.status == 0)
        #expect(!bare.stdout.contains("stdlib"))
        #expect(!bare.stdout.contains(repositoryRoot))

        // SCOPELUA_STDLIB still overrides.
        let forced = try runProcess("\(prefix)/bin/scopelua", ["-e", "print(package.path)"],
                                    directory: prefix, environment: ["SCOPELUA_STDLIB": "\(elsewhere)/mods"])
        #expect(forced.stdout.hasPrefix("\(elsewhere)/mods/?.lua;"))
    }

    /// The copy a test runs can be run at once, even while other tests start child
    /// processes: a copy written by this process failed now and then with "Text file
    /// busy" (a child forked meanwhile held its descriptor open for writing until it
    /// exec'd or exited). Here the children are forked and linger 20 ms before they exit,
    /// as a child the scheduler left waiting on a loaded machine would.
    @Test func aCopiedExecutableRunsWhileOtherTestsStartProcesses() throws {
        let dir = temporaryDirectory()
        let stop = Protected(false)
        let forking = Thread {
            while !stop.withLock({ $0 }) {
                let child = fork()
                if child == 0 { usleep(20_000); _exit(0) }
                if child > 0 { var status: Int32 = 0; waitpid(child, &status, 0) }
            }
        }
        forking.start()
        defer { stop.withLock { $0 = true } }
        for i in 0..<5 {
            try copyExecutable(scopeluaPath, to: "\(dir)/scopelua-\(i)")
            #expect(try runProcess("\(dir)/scopelua-\(i)", ["--version"]).status == 0)
            try? FileManager.default.removeItem(atPath: "\(dir)/scopelua-\(i)")
        }
    }
}
