import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaRepl

/// Runs `source` in a fresh runtime under `permissions` (nil: no sandbox), counting what
/// is open under `dir` once the chunk has returned.
private func sandboxed(_ permissions: Permissions?, in dir: String, _ source: String) -> LuaRun {
    runLua(watching: dir, source, permissions: permissions)
}

/// Nothing left open under the test's directory and nothing leaked or failing in the ledger.
private func expectClean(_ run: LuaRun, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(run.openDescriptors == 0, sourceLocation: sourceLocation)
    #expect(run.counts.acquired == run.counts.released, sourceLocation: sourceLocation)
    #expect(run.counts.leaked == 0, sourceLocation: sourceLocation)
    #expect(run.counts.releaseErrors == 0, sourceLocation: sourceLocation)
}

/// `--sandbox` (issue 14): hostile scripts against the checks, allowed operations, the
/// exact denials, and the command line.
@Suite(.timeLimit(testTimeLimit)) struct PermissionTests {
    /// A directory with `data/` (readable, holding `a.txt`), `out/` (writable) and a
    /// `secret.txt` beside them.
    func layout() -> (dir: String, permissions: Permissions) {
        let dir = temporaryDirectory()
        try? FileManager.default.createDirectory(atPath: "\(dir)/data", withIntermediateDirectories: true)
        try? FileManager.default.createDirectory(atPath: "\(dir)/out", withIntermediateDirectories: true)
        write("alpha\nbeta\n", to: "data/a.txt", in: dir)
        write("return 6 * 7\n", to: "data/chunk.lua", in: dir)
        write("top secret\n", to: "secret.txt", in: dir)
        let permissions = try? Permissions(read: ["\(dir)/data"], write: ["\(dir)/out"])
        return (dir, permissions ?? Permissions.none)
    }

    // MARK: - Paths

    @Test func pathsResolveDotDotAndSymlinksLikeTheKernel() throws {
        let dir = temporaryDirectory()
        let fm = FileManager.default
        try fm.createDirectory(atPath: "\(dir)/a/b", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: "\(dir)/a/up", withDestinationPath: "..")
        try fm.createSymbolicLink(atPath: "\(dir)/a/abs", withDestinationPath: "/etc")
        try fm.createSymbolicLink(atPath: "\(dir)/loop", withDestinationPath: "\(dir)/loop")
        #expect(Permissions.resolve("\(dir)/a/b/../b/./c.txt") == "\(dir)/a/b/c.txt")
        // `..` after a symlink leaves the link's target, not the link's directory.
        try fm.createSymbolicLink(atPath: "\(dir)/a/b/deep", withDestinationPath: "\(dir)/a/b")
        #expect(Permissions.resolve("\(dir)/a/up/a") == "\(dir)/a")
        #expect(Permissions.resolve("\(dir)/a/abs/passwd") == "/etc/passwd")
        #expect(Permissions.resolve("\(dir)/a/missing/../../secret") == "\(dir)/secret")
        #expect(Permissions.resolve("\(dir)/loop/x") == nil)
        #expect(Permissions.resolve("/") == "/")
    }

    @Test func dotDotCannotLeaveAnAllowedRoot() {
        let (dir, permissions) = layout()
        let run = sandboxed(permissions, in: dir, """
            local ok, err = pcall(function() return io.open("\(dir)/data/../secret.txt") end)
            return err
            """)
        #expect(run.values == [.string("test:1: permission denied: read \"\(dir)/data/../secret.txt\" (allowed: \(dir)/data)")])
        let write = sandboxed(permissions, in: dir, "io.open('\(dir)/out/../../x.txt', 'w')")
        #expect(write.error?.message == "test:1: permission denied: write \"\(dir)/out/../../x.txt\" (allowed: \(dir)/out)")
        expectClean(run)
    }

    @Test func aSymlinkInsideARootCannotPointOutside() throws {
        let (dir, permissions) = layout()
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/data/link", withDestinationPath: "\(dir)/secret.txt")
        // A dangling link: opening it for writing would create its target.
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/out/new", withDestinationPath: "\(dir)/created.txt")
        let read = sandboxed(permissions, in: dir, "return io.open('\(dir)/data/link'):read('a')")
        #expect(read.error?.message == "test:1: permission denied: read \"\(dir)/data/link\" (resolves to \"\(dir)/secret.txt\"; allowed: \(dir)/data)")
        let write = sandboxed(permissions, in: dir, "fs.open('\(dir)/out/new', 'w'):write('x')")
        #expect(write.error?.message == "test:1: permission denied: write \"\(dir)/out/new\" (resolves to \"\(dir)/created.txt\"; allowed: \(dir)/out)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/created.txt"))
        let viaModule = sandboxed(permissions, in: dir, "require('scope.fs').open('\(dir)/secret.txt')")
        #expect(viaModule.error?.message == "test:1: permission denied: read \"\(dir)/secret.txt\" (allowed: \(dir)/data)")
        expectClean(read)
        expectClean(write)
    }

    // MARK: - What is allowed works

    @Test func readsAndWritesUnderTheirRootsWork() {
        let (dir, permissions) = layout()
        let run = sandboxed(permissions, in: dir, """
            local got = {}
            do local f <close> = io.open("\(dir)/data/a.txt"); got[#got+1] = f:read("l") end
            for l in io.lines("\(dir)/data/a.txt") do got[#got+1] = l end
            do local f <close> = fs.open("\(dir)/data/a.txt"); got[#got+1] = f:read("l") end
            got[#got+1] = loadfile("\(dir)/data/chunk.lua")()
            got[#got+1] = dofile("\(dir)/data/chunk.lua")
            do local f <close> = fs.open("\(dir)/out/w.txt", "w"); f:write("written") end
            do local f <close> = io.open("\(dir)/out/w.txt", "a"); f:write("!") end
            assert(os.rename("\(dir)/out/w.txt", "\(dir)/out/v.txt"))
            return table.concat(got, ",")
            """)
        #expect(run.error == nil)
        #expect(run.values == [.string("alpha,alpha,beta,alpha,42,42")])
        #expect(read("\(dir)/out/v.txt") == "written!")
        expectClean(run)
    }

    @Test func readingBackAWriteOnlyRootIsDeniedNamingTheGrant() {
        let (dir, permissions) = layout()
        write("x", to: "out/v.txt", in: dir)
        let run = sandboxed(permissions, in: dir, "io.open('\(dir)/out/v.txt', 'r+')")
        #expect(run.error?.message == "test:1: permission denied: read \"\(dir)/out/v.txt\" (allowed: \(dir)/data)")
        let remove = sandboxed(permissions, in: dir, "assert(os.remove('\(dir)/out/v.txt')); return os.remove('\(dir)/secret.txt')")
        #expect(remove.error?.message == "test:1: permission denied: write \"\(dir)/secret.txt\" (allowed: \(dir)/out)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/out/v.txt"))
        #expect(FileManager.default.fileExists(atPath: "\(dir)/secret.txt"))
        expectClean(remove)
    }

    @Test func nothingGrantedSaysHowToGrant() {
        let dir = temporaryDirectory()
        let none = Permissions.none
        #expect(sandboxed(none, in: dir, "io.open('/etc/passwd')").error?.message
            == "test:1: permission denied: read \"/etc/passwd\" (nothing allowed; grant with --allow-read=PATH)")
        #expect(sandboxed(none, in: dir, "io.output('\(dir)/o.txt')").error?.message
            == "test:1: permission denied: write \"\(dir)/o.txt\" (nothing allowed; grant with --allow-write=PATH)")
        #expect(sandboxed(none, in: dir, "io.input('/etc/passwd')").error?.message
            == "test:1: permission denied: read \"/etc/passwd\" (nothing allowed; grant with --allow-read=PATH)")
        #expect(sandboxed(none, in: dir, "os.rename('\(dir)/a', '\(dir)/b')").error?.message
            == "test:1: permission denied: write \"\(dir)/a\" (nothing allowed; grant with --allow-write=PATH)")
        #expect(sandboxed(none, in: dir, "os.tmpname()").error?.message
            == "test:1: permission denied: write \"/tmp/lua_XXXXXX\" (nothing allowed; grant with --allow-write=PATH)")
        #expect(sandboxed(none, in: dir, "loadfile('/etc/passwd')").error?.message
            == "test:1: permission denied: read \"/etc/passwd\" (nothing allowed; grant with --allow-read=PATH)")
        #expect(sandboxed(none, in: dir, "dofile('/etc/passwd')").error?.message
            == "test:1: permission denied: read \"/etc/passwd\" (nothing allowed; grant with --allow-read=PATH)")
        // The arguments are still checked as io checks them.
        #expect(sandboxed(none, in: dir, "io.open()").error?.message == "test:1: bad argument #1 to 'open' (string expected, got no value)")
        #expect(sandboxed(none, in: dir, "io.open('x', 'rw')").error?.message == "test:1: bad argument #2 to 'open' (invalid mode)")
        // The default input and output are not files the script names.
        #expect(sandboxed(none, in: dir, "return io.input() ~= nil, io.output() ~= nil").values == [.boolean(true), .boolean(true)])
    }

    // MARK: - Commands, environment, native code

    @Test func commandsAndTheEnvironmentNeedTheirGrants() throws {
        let dir = temporaryDirectory()
        let none = Permissions.none
        #expect(sandboxed(none, in: dir, "io.popen('ls')").error?.message == "test:1: permission denied: exec \"ls\" (grant with --allow-exec)")
        #expect(sandboxed(none, in: dir, "os.execute('touch \(dir)/ran')").error?.message
            == "test:1: permission denied: exec \"touch \(dir)/ran\" (grant with --allow-exec)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/ran"))
        #expect(sandboxed(none, in: dir, "os.getenv('HOME')").error?.message == "test:1: permission denied: env \"HOME\" (grant with --allow-env)")
        let granted = try Permissions(exec: true, env: true)
        let run = sandboxed(granted, in: dir, "return os.execute('true'), os.getenv('PATH') ~= nil")
        #expect(run.values.first == .boolean(true))
        #expect(run.values.last == .boolean(true))
        expectClean(run)
    }

    @Test func aCModuleNeedsAllowNativeAndIsNotLoadedWithoutIt() throws {
        let dir = temporaryDirectory()
        // Not a shared object: were it opened, the loader's error would say so.
        write("not an ELF file", to: "fake.so", in: dir)
        let script = """
            package.cpath = "\(dir)/?.so"
            local _, plain = pcall(require, "fake")
            local _, sub = pcall(require, "fake.sub")
            local _, lib = pcall(package.loadlib, "\(dir)/fake.so", "luaopen_fake")
            return plain, sub, lib
            """
        let run = sandboxed(Permissions.none, in: dir, script)
        let denial = "permission denied: native \"\(dir)/fake.so\" (grant with --allow-native)"
        #expect(run.values == [.string(denial), .string(denial), .string(denial)])
        // Granted, the stock loader runs (and fails on the fake file).
        let granted = sandboxed(try Permissions(native: true), in: dir, script)
        #expect(granted.values.first?.description.contains("error loading module 'fake'") == true)
        // A name no searcher finds is still "not found", listing where it looked.
        let missing = sandboxed(Permissions.none, in: dir, "package.cpath = '\(dir)/?.so'; require 'nothere'")
        #expect(missing.error?.message.contains("module 'nothere' not found") == true)
        #expect(missing.error?.message.contains("no file '\(dir)/nothere.so'") == true)
        expectClean(run)
    }

    @Test func aLuaModuleMustBeReadableAndLoadsAsText() throws {
        let dir = temporaryDirectory()
        let modules = temporaryDirectory()
        write("return { answer = 42 }", to: "m.lua", in: modules)
        let script = "package.path = '\(modules)/?.lua'; return require('m').answer"
        let denied = sandboxed(Permissions.none, in: dir, script)
        #expect(denied.error?.message.hasPrefix("test:1: permission denied: read \"\(modules)/m.lua\" (allowed: ") == true)
        let allowed = sandboxed(try Permissions(read: [modules]), in: dir, script)
        #expect(allowed.values == [.integer(42)])
        // A precompiled chunk is refused even where reading is allowed.
        let binary = sandboxed(try Permissions(read: [modules], write: [modules]), in: dir, """
            local f <close> = io.open("\(modules)/b.lua", "wb")
            f:write(string.dump(function() return 1 end))
            f:close()
            package.path = "\(modules)/?.lua"
            return select(2, pcall(require, "b"))
            """)
        #expect(binary.values.first?.description.contains("attempt to load a binary chunk (mode is 't')") == true)
        expectClean(allowed)
    }

    // MARK: - What could lift the sandbox

    @Test func loadWithACustomEnvironmentCannotEscape() {
        let dir = temporaryDirectory()
        let run = sandboxed(Permissions.none, in: dir, """
            local env = { io = io, os = os, load = load }
            local f = load("return io.open('/etc/passwd')", "=escape", "t", env)
            local _, e1 = pcall(f)
            local g = load("return load('return os.getenv(\\"HOME\\")', '=inner', 't', { os = os })()", "=outer", "t", env)
            local _, e2 = pcall(g)
            local bin = string.dump(function() return 1 end)
            local _, e3 = load(bin)
            local _, e4 = load(bin, "=b", "b")
            local _, e5 = load(bin, "=b", "b", {})
            return e1, e2, e3, e4, e5
            """)
        #expect(run.values == [
            .string("escape:1: permission denied: read \"/etc/passwd\" (nothing allowed; grant with --allow-read=PATH)"),
            .string("inner:1: permission denied: env \"HOME\" (grant with --allow-env)"),
            .string("attempt to load a binary chunk (mode is 't')"),
            .string("attempt to load a binary chunk (mode is 't')"),
            .string("attempt to load a binary chunk (mode is 't')"),
        ])
        expectClean(run)
    }

    @Test func theDebugLibraryCannotLiftTheSandbox() {
        let dir = temporaryDirectory()
        let run = sandboxed(Permissions.none, in: dir, """
            local errors = {}
            local function try(f, ...) local ok, e = pcall(f, ...); errors[#errors+1] = ok and "allowed" or e end
            local h <close> = timer.measure("x")
            try(debug.sethook, nil)
            try(debug.sethook)
            try(debug.getregistry)
            try(collectgarbage, "stop")
            try(debug.getmetatable, h)
            try(debug.setmetatable, h, nil)
            try(debug.getupvalue, io.open, 1)
            try(debug.setupvalue, io.open, 1, print)
            try(debug.getlocal, 0, 1)
            try(debug.debug)
            return table.concat(errors, "\\n"), collectgarbage("isrunning"), getmetatable(h)
            """)
        #expect(run.error == nil)
        #expect(run.values.first?.description == """
            permission denied: debug.sethook (not available under --sandbox)
            permission denied: debug.sethook (not available under --sandbox)
            permission denied: debug.getregistry (not available under --sandbox)
            permission denied: collectgarbage("stop") (not available under --sandbox)
            permission denied: debug.getmetatable on a userdata (not available under --sandbox)
            permission denied: debug.setmetatable on a userdata (not available under --sandbox)
            permission denied: debug.getupvalue on a C function (not available under --sandbox)
            permission denied: debug.setupvalue on a C function (not available under --sandbox)
            permission denied: debug.getlocal in a C function's frame (not available under --sandbox)
            permission denied: debug.debug (not available under --sandbox)
            """)
        #expect(run.values.dropFirst() == [.boolean(true), .boolean(false)])
        expectClean(run)
    }

    @Test func cFramesDoNotHandOutTheirFunctionsOrSlots() {
        let dir = temporaryDirectory()
        // A comparator runs inside table.sort (a C frame, level 2 from inside it); a
        // finalizer can run inside any C function. Neither may see the C frame's function.
        let run = sandboxed(Permissions.none, in: dir, """
            local seen = {}
            table.sort({3, 1, 2}, function(a, b)
              local info = debug.getinfo(2, "fS")
              seen.what, seen.func = info.what, info.func
              seen.lua = debug.getinfo(1, "f").func ~= nil
              -- levels from inside the closure: 1 closure, 2 pcall, 3 comparator, 4 table.sort
              seen.local2 = select(2, pcall(function() return debug.getlocal(4, 1) end))
              seen.set2 = select(2, pcall(function() return debug.setlocal(4, 1, "/etc/passwd") end))
              return a < b
            end)
            local co = coroutine.create(function() coroutine.yield() end)
            coroutine.resume(co)
            local info = debug.getinfo(co, 0, "fS")
            local ok = info == nil or info.what ~= "C" or info.func == nil
            return seen.what, seen.func == nil, seen.lua, seen.local2, seen.set2, ok
            """)
        #expect(run.values == [
            .string("C"), .boolean(true), .boolean(true),
            .string("test:7: permission denied: debug.getlocal in a C function's frame (not available under --sandbox)"),
            .string("test:8: permission denied: debug.setlocal in a C function's frame (not available under --sandbox)"),
            .boolean(true),
        ])
        expectClean(run)
    }

    @Test func withoutTheSandboxEverythingIsStock() {
        let dir = temporaryDirectory()
        let run = sandboxed(nil, in: dir, """
            debug.sethook(function() end, "", 1000); debug.sethook()
            collectgarbage("stop"); collectgarbage("restart")
            local f <close> = io.open("/etc/passwd")
            return debug.getregistry() ~= nil, f ~= nil, load(string.dump(function() return 7 end))()
            """)
        #expect(run.error == nil)
        #expect(run.values == [.boolean(true), .boolean(true), .integer(7)])
    }

    // MARK: - Modules

    @Test func sqlOpenAndAttachStayUnderTheRoots() throws {
        let (dir, _) = layout()
        let permissions = try Permissions(read: ["\(dir)/data", "\(dir)/out"], write: ["\(dir)/out"])
        let run = sandboxed(permissions, in: dir, """
            local r = {}
            local function try(f, ...) local ok, e = pcall(f, ...); r[#r+1] = ok and "allowed" or e end
            local db <close> = sql.open("\(dir)/out/db.sqlite")
            db:exec("CREATE TABLE t(x)")
            try(db.exec, db, "ATTACH '\(dir)/other.db' AS o")
            try(db.exec, db, "ATTACH ? AS o", "\(dir)/out/p.db")
            try(db.exec, db, "VACUUM INTO '\(dir)/copy.db'")
            try(db.exec, db, "ATTACH 'file:\(dir)/out/u.db' AS u")
            try(db.exec, db, "ATTACH '\(dir)/out/inside.db' AS i")
            try(db.exec, db, "VACUUM INTO '\(dir)/out/copy.db'")
            try(sql.open, "\(dir)/x.db")
            try(sql.open, "\(dir)/secret.txt", { readonly = true })
            local mem <close> = sql.open(":memory:")
            return table.concat(r, "\\n")
            """)
        #expect(run.error == nil)
        #expect(run.values.first?.description == """
            permission denied: write "\(dir)/other.db" (allowed: \(dir)/out) (in "ATTACH '\(dir)/other.db' AS o")
            permission denied: ATTACH of a file name the statement computes (write the name as a string literal under --sandbox) (in "ATTACH ? AS o")
            permission denied: write "\(dir)/copy.db" (allowed: \(dir)/out) (in "VACUUM INTO '\(dir)/copy.db'")
            permission denied: SQLite URI file name "file:\(dir)/out/u.db" (not available under --sandbox; give a plain path) (in "ATTACH 'file:\(dir)/out/u.db' AS u")
            allowed
            allowed
            permission denied: write "\(dir)/x.db" (allowed: \(dir)/out)
            permission denied: read "\(dir)/secret.txt" (allowed: \(dir)/data, \(dir)/out)
            """)
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/other.db"))
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/copy.db"))
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/x.db"))
        #expect(FileManager.default.fileExists(atPath: "\(dir)/out/copy.db"))
        expectClean(run)
    }

    @Test func redisConnectIsCheckedBeforeConnecting() throws {
        let dir = temporaryDirectory()
        let permissions = try Permissions(net: ["localhost:6379"])
        let run = sandboxed(permissions, in: dir, """
            local r = {}
            for _, url in ipairs{ "redis://10.0.0.1:6379", "redis://localhost:6380", "unix:///tmp/redis.sock" } do
              r[#r+1] = select(2, pcall(redis.connect, url))
            end
            return table.unpack(r)
            """)
        #expect(run.values == [
            .string("permission denied: net \"10.0.0.1:6379\" (allowed: localhost:6379)"),
            .string("permission denied: net \"localhost:6380\" (allowed: localhost:6379)"),
            .string("permission denied: write \"/tmp/redis.sock\" (nothing allowed; grant with --allow-write=PATH)"),
        ])
        let none = sandboxed(Permissions.none, in: dir, "redis.connect('redis://[::1]:7000')")
        #expect(none.error?.message == "test:1: permission denied: net \"[::1]:7000\" (nothing allowed; grant with --allow-net=HOST[:PORT])")
        expectClean(run)
    }

    @Test func hostRulesMatchHostAndPort() throws {
        let p = try Permissions(net: ["Example.com", "10.0.0.1:6379", "[::1]:7000"])
        #expect(p.denial(.net, "example.com:1") == nil)
        #expect(p.denial(.net, "10.0.0.1:6379") == nil)
        #expect(p.denial(.net, "10.0.0.1:6380") != nil)
        #expect(p.denial(.net, "[::1]:7000") == nil)
        #expect(p.denial(.net, "localhost:6379") != nil)
        #expect(throws: PermissionError.self) { try Permissions(net: ["host:99999"]) }
        #expect(throws: PermissionError.self) { try Permissions(read: ["/no/such/root"]) }
    }

    @Test func pipelineRunFilesAreTheScripts() {
        let (dir, permissions) = layout()
        let run = sandboxed(permissions, in: dir, """
            stage "s" { process = function(ctx, e) return e end }
            local p = pipeline "p" { "s" }
            local _, e1 = pcall(p.run, p, { input = "\(dir)/secret.txt" })
            local _, e2 = pcall(p.run, p, { input = { { a = 1 } }, output = "\(dir)/leak.jsonl" })
            return e1, e2
            """)
        #expect(run.values == [
            .string("permission denied: read \"\(dir)/secret.txt\" (allowed: \(dir)/data)"),
            .string("permission denied: write \"\(dir)/leak.jsonl\" (allowed: \(dir)/out)"),
        ])
        expectClean(run)
    }

    // MARK: - The REPL

    @Test func limitsShowTheMemoryLimitAndThePermissions() throws {
        let (dir, _) = layout()
        var options = RuntimeOptions()
        options.memoryLimit = 64 << 20
        options.permissions = try Permissions(read: ["\(dir)/data"], net: ["localhost:6379"], env: true)
        options.stdlibPath = "\(dir)/no-stdlib"
        let repl = Repl(options: options) { _ in }
        #expect(repl.limitsDescription().hasPrefix("""
            memory   64 MiB for the Lua state
            stages   no limits (a stage's or pipeline's limits = { time = 0.5, instructions = 5e7, memory = "64MB" })
            sandbox  on: what is not granted below is denied
            read     \(dir)/data
            write    nothing (--allow-write=PATH)
            exec     denied (--allow-exec)
            env      allowed
            net      localhost:6379
            native   denied (--allow-native)
            """))
        _ = repl.quit()
        let open = Repl(options: RuntimeOptions()) { _ in }
        #expect(open.limitsDescription() == """
            memory   no limit (--memory-limit SIZE)
            stages   no limits (a stage's or pipeline's limits = { time = 0.5, instructions = 5e7, memory = "64MB" })
            sandbox  off: everything is allowed (--sandbox)
            """)
        _ = open.quit()
        #expect(Repl.help.contains(":limits"))
    }

    // MARK: - The command line

    @Test func allowWithoutSandboxIsAUsageErrorNamingTheFix() throws {
        let dir = temporaryDirectory()
        write("print('ran')", to: "job.lua", in: dir)
        let r = try scopelua(["run", "--allow-read=.", "job.lua"], directory: dir)
        #expect(r.status == 2)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr.hasPrefix("Error: --allow-read needs --sandbox (without it everything is allowed)\nUsage: scopelua run "))
        let missing = try scopelua(["run", "--sandbox", "--allow-write=nope,.", "job.lua"], directory: dir)
        #expect(missing.status == 2)
        #expect(missing.stderr.hasPrefix("Error: --allow-write: no such file or directory: nope\n"))
        let host = try scopelua(["run", "--sandbox", "--allow-net=a:b", "job.lua"], directory: dir)
        #expect(host.status == 2)
        #expect(host.stderr.hasPrefix("Error: --allow-net: \"a:b\" is not HOST or HOST:PORT (a port from 1 to 65535)\n"))
        let empty = try scopelua(["run", "--sandbox", "--allow-read=", "job.lua"], directory: dir)
        #expect(empty.status == 2)
        let repl = try scopelua(["repl", "--allow-exec"], stdin: "", directory: dir)
        #expect(repl.status == 2)
        #expect(repl.stderr.hasPrefix("Error: --allow-exec needs --sandbox (without it everything is allowed)\nUsage: scopelua repl "))
        let size = try scopelua(["repl", "--memory-limit", "12"], stdin: "", directory: dir)
        #expect(size.status == 2)
        #expect(size.stderr.hasPrefix("Error: --memory-limit must be a size of at least 1MB"))
    }

    @Test func aSandboxedRunDeniesAndExitsOneWhileItsOwnFilesAreOpenedByTheRunner() throws {
        let dir = temporaryDirectory()
        try FileManager.default.createDirectory(atPath: "\(dir)/out", withIntermediateDirectories: true)
        write("return { greet = function() return 'hi' end }", to: "helper.lua", in: dir)
        write("""
            local helper = require "helper"
            local f <close> = io.open("out/log.txt", "w")
            f:write(helper.greet())
            stage "s" { process = function(ctx, e) return e end }
            pipeline "p" { "s" }
            """, to: "job.lua", in: dir)
        write("{\"id\":1}\n", to: "in.jsonl", in: dir)
        // Options before and after the script; the input and output are the runner's.
        let ok = try scopelua(["run", "--sandbox", "job.lua", "--allow-write=out", "--input", "in.jsonl", "--output", "res.jsonl"], directory: dir)
        #expect(ok.status == 0)
        #expect(ok.stderr.isEmpty)
        #expect(read("\(dir)/out/log.txt") == "hi")
        #expect(read("\(dir)/res.jsonl") == "{\"id\":1}\n")
        write("print(io.open('/etc/passwd'))", to: "bad.lua", in: dir)
        let bad = try scopelua(["run", "--sandbox", "bad.lua"], directory: dir)
        #expect(bad.status == 1)
        #expect(bad.stderr.hasPrefix("scopelua: bad.lua:1: permission denied: read \"/etc/passwd\" (nothing allowed; grant with --allow-read=PATH)\n"))
    }

    @Test func workersGetThePermissionsToo() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" {
              open = function(ctx) ctx.state.home = select(2, pcall(os.getenv, "HOME")) end,
              process = function(ctx, e) e.env = ctx.state.home; return e end,
            }
            pipeline "p" { "s" }
            """, to: "job.lua", in: dir)
        write((1...600).map { "{\"id\":\($0)}" }.joined(separator: "\n") + "\n", to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "--sandbox", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "2"], directory: dir)
        #expect(r.status == 0)
        let lines = read("\(dir)/out.jsonl")?.split(separator: "\n") ?? []
        #expect(lines.count == 600)
        #expect(lines.allSatisfy { $0.contains("permission denied: env") })
    }

    @Test func theReplTakesTheSameOptions() throws {
        let dir = temporaryDirectory()
        try FileManager.default.createDirectory(atPath: "\(dir)/data", withIntermediateDirectories: true)
        let r = try scopelua(["repl", "--sandbox", "--allow-read=data/", "--memory-limit", "64MB"],
                             stdin: ":limits\nio.open('/etc/passwd')\n", directory: dir)
        #expect(r.status == 1)
        #expect(r.stdout.hasPrefix("""
            memory   64 MiB for the Lua state
            stages   no limits (a stage's or pipeline's limits = { time = 0.5, instructions = 5e7, memory = "64MB" })
            sandbox  on: what is not granted below is denied
            read     data/
            """))
        #expect(r.stderr.contains("stdin:1: permission denied: read \"/etc/passwd\" (allowed: data/)"))
    }
}
