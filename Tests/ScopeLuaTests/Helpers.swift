import Foundation
import Testing
@testable import ScopeLua

/// Collects a runtime's diagnostics lines. Used from the test's own thread only.
final class Lines: @unchecked Sendable {
    var all: [String] = []
}

/// The outcome of running a chunk in a fresh runtime (closed afterwards).
struct LuaRun {
    var values: [LuaValue]
    var error: LuaError?
    var diagnostics: [String]
    var counts: ResourceCounts
    /// The counts once the chunk has returned, before `close()` released what was left
    /// (after it, `acquired == released` always holds).
    var countsBeforeClose: ResourceCounts
    var timers: [TimerSummary]
    /// With `runLua(_:watching:)`: the descriptors of this process open under that
    /// directory once the chunk has returned, while the runtime is still open. (After
    /// `close()` the runtime has released everything, so a count then is always 0.)
    var openDescriptors: Int?

    /// The chunk's first result as a string (tests return `table.concat(log, ",")`).
    var text: String { values.first?.description ?? "" }
}

/// Runs `source` as chunk `test` in a new runtime (under `permissions`: nil, no sandbox),
/// then closes the runtime (releasing whatever is still open, as the end of a run does).
/// With `watching`, also counts the descriptors open under that directory before the
/// runtime is closed.
func runLua(watching directory: String? = nil, _ source: String, trace: Bool = false, permissions: Permissions? = nil,
            beforeClose: (Runtime) -> Void = { _ in }) -> LuaRun {
    let lines = Lines()
    var options = RuntimeOptions()
    options.trace = trace
    options.permissions = permissions
    options.diagnostics = { lines.all.append($0) }
    let rt = Runtime(options: options)
    var values: [LuaValue] = []
    var failure: LuaError?
    do {
        values = try rt.execute(source, name: "=test")
    } catch {
        failure = error
    }
    let open = directory.map { openDescriptors(under: $0) }
    let countsBeforeClose = rt.resourceCounts
    beforeClose(rt)
    rt.close()
    return LuaRun(values: values, error: failure, diagnostics: lines.all, counts: rt.resourceCounts,
                  countsBeforeClose: countsBeforeClose, timers: rt.timers, openDescriptors: open)
}

/// A fresh directory for one test.
func temporaryDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("scopelua-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Open file descriptors of a process (this one by default) whose target lies under
/// `directory`: a count that tests running in parallel cannot disturb.
func openDescriptors(under directory: String, process pid: pid_t? = nil) -> Int {
    let fdDirectory = "/proc/\(pid.map(String.init) ?? "self")/fd"
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: fdDirectory)) ?? []
    return fds.filter { fd in
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDirectory)/\(fd)"))?.hasPrefix(directory) ?? false
    }.count
}

/// The children of process `parent` whose command name is `name` (from /proc).
func childProcesses(of parent: pid_t, named name: String) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> pid_t? in
        guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
        // "pid (comm) state ppid ...": comm may contain spaces, so split after ')'.
        let comm = stat[stat.index(after: open)..<close]
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard comm == name, fields.count > 1, pid_t(fields[1]) == parent else { return nil }
        return pid
    }
}

/// Polls `condition` until it holds or `seconds` have passed; returns whether it held.
/// For waiting on something another process does (a line it prints, a file it creates):
/// the deadline is generous because a loaded machine or a sanitizer slows the child, and
/// a condition that holds returns at once.
func waitUntil(seconds: Double = 30, _ condition: () throws -> Bool) rethrows -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        if try condition() { return true }
        usleep(10_000)
    }
    return try condition()
}

/// A mask of signals from /proc/PID/status (`SigCgt` caught, `ShdPnd` pending for the
/// process) contains `signal`.
func processStatus(_ pid: pid_t, _ field: String, has signal: Int32) -> Bool {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
          let mask = UInt64(line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces), radix: 16)
    else { return false }
    return mask & (1 << UInt64(signal - 1)) != 0
}

/// True when scripts/ci-asan.sh runs the suite (built with AddressSanitizer).
let runningUnderASan = ProcessInfo.processInfo.environment["SCOPELUA_ASAN"] != nil

/// Every suite's time limit, so that a hang fails its test instead of the whole run. The
/// clock of a test starts when the runner starts it, but the runner starts every test at
/// once and its body then waits for one of the pool's threads (two on CI's two cores):
/// the limit has to cover that wait too. The suite takes about half a minute in a debug
/// build and over a minute under ASan, where one minute failed tests that were only
/// waiting.
let testTimeLimit: TimeLimitTrait.Duration = .minutes(runningUnderASan ? 10 : 3)

/// The built `scopelua` executable (next to the test bundle).
let scopeluaPath: String = {
    let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [here, here.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("scopelua").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return root.appendingPathComponent(".build/debug/scopelua").path
}()

/// The repository root (for scripts/ and the shared baselines).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program and waits for it. A program still running after `timeout` seconds is
/// killed (SIGKILL) and the test fails, so a hung child cannot hang the suite.
func runProcess(_ executable: String, _ arguments: [String], stdin: String? = nil,
                directory: String? = nil, environment: [String: String]? = nil,
                timeout: Double = 50, sourceLocation: SourceLocation = #_sourceLocation) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let out = Pipe(), err = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    let pid = process.processIdentifier
    final class Flag: @unchecked Sendable { var killed = false }  // written before the pipes close
    let timedOut = Flag()
    let watchdog = DispatchWorkItem {
        if process.isRunning {
            timedOut.killed = true
            kill(pid, SIGKILL)
        }
    }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try? input.fileHandleForWriting.close()
    // Read both pipes before waiting, so a chatty child cannot block on a full pipe.
    final class Box: @unchecked Sendable { var data = Data() }  // written before group.wait()
    let errData = Box()
    let group = DispatchGroup()
    group.enter()
    let errHandle = err.fileHandleForReading
    DispatchQueue.global().async {
        errData.data = errHandle.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    watchdog.cancel()
    if timedOut.killed {
        Issue.record("\(executable) \(arguments.joined(separator: " ")) still ran after \(timeout) s: killed",
                     sourceLocation: sourceLocation)
    }
    return ProcessResult(status: process.terminationStatus,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData.data, as: UTF8.self))
}

/// Copies an executable that a test then runs. The copy is made by `cp`, a child process:
/// a copy written by this process (FileManager.copyItem) holds a descriptor open for
/// writing that a child forked meanwhile by a test running in parallel inherits until it
/// execs, and running the copy in that window fails with ETXTBSY ("Text file busy").
/// `cp`'s descriptor is never in this process, so no child of ours can hold it.
func copyExecutable(_ source: String, to destination: String,
                    sourceLocation: SourceLocation = #_sourceLocation) throws {
    let copied = try runProcess("/bin/cp", [source, destination], sourceLocation: sourceLocation)
    guard copied.status == 0 else {
        throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "cp \(source) \(destination): \(copied.stderr)"])
    }
}

/// `scopelua ARGS...`
func scopelua(_ arguments: [String], stdin: String? = nil, directory: String? = nil,
              sourceLocation: SourceLocation = #_sourceLocation) throws -> ProcessResult {
    try runProcess(scopeluaPath, arguments, stdin: stdin, directory: directory, sourceLocation: sourceLocation)
}

/// Writes `text` to `dir/name` and returns the path.
@discardableResult
func write(_ text: String, to name: String, in dir: String) -> String {
    let path = "\(dir)/\(name)"
    _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    return path
}

func read(_ path: String) -> String? {
    FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) }
}
