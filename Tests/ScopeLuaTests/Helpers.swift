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
    var timers: [TimerSummary]

    /// The chunk's first result as a string (tests return `table.concat(log, ",")`).
    var text: String { values.first?.description ?? "" }
}

/// Runs `source` as chunk `test` in a new runtime, then closes the runtime (releasing
/// whatever is still open, as the end of a run does).
func runLua(_ source: String, trace: Bool = false) -> LuaRun {
    let lines = Lines()
    var options = RuntimeOptions()
    options.trace = trace
    options.diagnostics = { lines.all.append($0) }
    let rt = Runtime(options: options)
    var values: [LuaValue] = []
    var failure: LuaError?
    do {
        values = try rt.execute(source, name: "=test")
    } catch {
        failure = error
    }
    rt.close()
    return LuaRun(values: values, error: failure, diagnostics: lines.all, counts: rt.resourceCounts, timers: rt.timers)
}

/// A fresh directory for one test.
func temporaryDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("scopelua-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Open file descriptors of this process whose target lies under `directory`: a count
/// that tests running in parallel cannot disturb.
func openDescriptors(under directory: String) -> Int {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return fds.filter { fd in
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)"))?.hasPrefix(directory) ?? false
    }.count
}

/// True when scripts/ci-asan.sh runs the suite (built with AddressSanitizer).
let runningUnderASan = ProcessInfo.processInfo.environment["SCOPELUA_ASAN"] != nil

/// Resident set size of this process, in KiB.
func residentKiB() -> Int {
    guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return pages * Int(sysconf(Int32(_SC_PAGESIZE))) / 1024
}

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

/// Runs a program and waits for it.
func runProcess(_ executable: String, _ arguments: [String], stdin: String? = nil,
                directory: String? = nil, environment: [String: String]? = nil) throws -> ProcessResult {
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
    return ProcessResult(status: process.terminationStatus,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData.data, as: UTF8.self))
}

/// `scopelua ARGS...`
func scopelua(_ arguments: [String], stdin: String? = nil, directory: String? = nil) throws -> ProcessResult {
    try runProcess(scopeluaPath, arguments, stdin: stdin, directory: directory)
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
