import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// What a sandboxed runtime may touch (`--sandbox` and the `--allow-*` options; README,
/// "Permissions"). `RuntimeOptions.permissions` nil means no sandbox: everything is
/// allowed, as under stock Lua.
///
/// Paths are compared after resolution (`resolve`): absolute, `.` and `..` applied to the
/// real directories, every symlink followed, so neither `..` nor a symlink inside an
/// allowed root reaches outside it. Roots are resolved once, here.
public struct Permissions: Sendable, Equatable {
    /// What a check asks for. The raw values are the C side's (`SL_PERM_*`).
    public enum Access: Int32, Sendable {
        /// Opening a file to read (io.open "r", io.lines, loadfile, sql.open readonly, ...).
        case read = 0
        /// Creating, changing, renaming or removing a file.
        case write = 1
        /// Running a command (os.execute, io.popen).
        case exec = 2
        /// Reading an environment variable (os.getenv).
        case env = 3
        /// Connecting to `host:port` (redis.connect).
        case net = 4
        /// Loading native code (C modules, package.loadlib).
        case native = 5
        /// Reading a Lua module's file for `require`: the read roots, and also the
        /// `moduleRoots` (scopelua's stdlib, the script's directory).
        case module = 6
    }

    /// A file or directory granted, as the user typed it and resolved.
    public struct Root: Sendable, Equatable {
        public let typed: String
        public let resolved: String

        /// Whether the resolved `path` is this root or lies under it.
        func contains(_ path: String) -> Bool {
            resolved == "/" || path == resolved || path.hasPrefix(resolved + "/")
        }
    }

    /// A host granted by `--allow-net`, with its port or any port.
    public struct Host: Sendable, Equatable {
        public let typed: String
        let host: String
        let port: Int?
    }

    public private(set) var read: [Root] = []
    public private(set) var write: [Root] = []
    public private(set) var net: [Host] = []
    public var exec = false
    public var env = false
    public var native = false
    /// Directories `require` may load Lua modules from besides the read roots: scopelua's
    /// stdlib (added when the runtime installs the checks) and the script's directory
    /// (added by the runner).
    public private(set) var moduleRoots: [Root] = []

    /// Grants `read` and `write` (files or directories, which must exist), `net`
    /// (`host`, `host:port`, `[v6]:port`) and the rest. Throws naming the first root that
    /// does not exist or the host that cannot be read.
    public init(read: [String] = [], write: [String] = [], net: [String] = [],
                exec: Bool = false, env: Bool = false, native: Bool = false) throws {
        self.read = try read.map { try Self.root($0, option: "--allow-read") }
        self.write = try write.map { try Self.root($0, option: "--allow-write") }
        self.net = try net.map { text in
            guard let (host, port) = Self.hostAndPort(text) else {
                throw PermissionError("--allow-net: \"\(text)\" is not HOST or HOST:PORT (a port from 1 to 65535)")
            }
            return Host(typed: text, host: host, port: port)
        }
        self.exec = exec
        self.env = env
        self.native = native
    }

    /// `--sandbox` alone: nothing granted.
    public static let none = Permissions(nothing: ())

    private init(nothing: Void) {}

    /// `PATH[,PATH]...` values of a repeated option as one list (`--allow-read=a,b
    /// --allow-read=c`: a, b, c). An empty entry is an error naming the option.
    public static func list(_ values: [String], option: String) throws -> [String] {
        try values.flatMap { value in
            try value.split(separator: ",", omittingEmptySubsequences: false).map { item in
                guard !item.isEmpty else { throw PermissionError("\(option) needs a value (\(option)=VALUE[,VALUE...])") }
                return String(item)
            }
        }
    }

    /// Also lets `require` load Lua modules from `directory` (nothing when it does not
    /// exist, or is there already).
    public mutating func allowModules(under directory: String) {
        guard let resolved = Self.resolve(directory), Self.exists(resolved),
              !moduleRoots.contains(where: { $0.resolved == resolved }) else { return }
        // Shown resolved: "." or "../lib" would say little in a denial.
        moduleRoots.append(Root(typed: resolved, resolved: resolved))
    }

    private static func root(_ typed: String, option: String) throws -> Root {
        guard let resolved = resolve(typed), exists(resolved) else {
            throw PermissionError("\(option): no such file or directory: \(typed)")
        }
        return Root(typed: typed, resolved: resolved)
    }

    private static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    // MARK: - Checking

    /// Nil when `access` to `subject` is allowed; else the denial, e.g. `permission
    /// denied: write "/etc/passwd" (allowed: out/)`. `subject` is a path for read, write,
    /// native and module (up to a zero byte, as C sees it), a command for exec, a
    /// variable's name for env, `host:port` for net.
    public func denial(_ access: Access, _ subject: String) -> String? {
        let subject = String(subject.prefix { $0 != "\0" })
        switch access {
        case .exec:
            return exec ? nil : "permission denied: exec \(quoted(subject)) (grant with --allow-exec)"
        case .env:
            return env ? nil : "permission denied: env \(quoted(subject)) (grant with --allow-env)"
        case .native:
            return native ? nil : "permission denied: native \(quoted(subject)) (grant with --allow-native)"
        case .net:
            return netDenial(subject)
        case .read, .write, .module:
            let roots = access == .write ? write : access == .read ? read : read + moduleRoots
            guard let resolved = Self.resolve(subject) else {
                return "permission denied: \(access == .write ? "write" : "read") \(quoted(subject)) (too many symbolic links)"
            }
            if roots.contains(where: { $0.contains(resolved) }) { return nil }
            let option = access == .write ? "--allow-write" : "--allow-read"
            var allowed = roots.isEmpty ? "nothing allowed; grant with \(option)=PATH"
                                        : "allowed: " + roots.map(\.typed).joined(separator: ", ")
            // A symlink made the difference: say where the path really goes.
            if resolved != Self.lexical(subject) { allowed = "resolves to \(quoted(resolved)); " + allowed }
            return "permission denied: \(access == .write ? "write" : "read") \(quoted(subject)) (\(allowed))"
        }
    }

    private func netDenial(_ subject: String) -> String? {
        if let (host, port) = Self.hostAndPort(subject),
           net.contains(where: { $0.host == host && ($0.port == nil || $0.port == port) }) {
            return nil
        }
        let allowed = net.isEmpty ? "nothing allowed; grant with --allow-net=HOST[:PORT]"
                                  : "allowed: " + net.map(\.typed).joined(separator: ", ")
        return "permission denied: net \(quoted(subject)) (\(allowed))"
    }

    private func quoted(_ s: String) -> String { "\"\(s)\"" }

    /// `host`, `host:port` or `[v6]` / `[v6]:port`: the host in lower case, the port if
    /// given (1...65535). A bare IPv6 address (more than one colon) is a host alone.
    static func hostAndPort(_ text: String) -> (String, Int?)? {
        var host = Substring(text), portText: Substring?
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { return nil }
                portText = rest.dropFirst()
            }
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { return nil }
        var port: Int?
        if let portText {
            guard let p = Int(portText), p >= 1, p <= 65535 else { return nil }
            port = p
        }
        return (host.lowercased(), port)
    }

    // MARK: - Paths

    /// The absolute path `path` names, with `.`, `..` and every symlink resolved as the
    /// kernel would: component by component, `..` applied to the directory reached so
    /// far (after its symlinks), a symlink's target spliced in (an absolute one from
    /// `/`). Components that do not exist are kept as written (the file to create, or a
    /// name whose open will fail). Relative paths start at the current directory. Nil
    /// after 40 symlinks (a loop: the open would fail with ELOOP).
    public static func resolve(_ path: String) -> String? {
        var pending = components(absolute(path)).reversed() as [Substring]
        var done: [Substring] = []
        var links = 0
        while let c = pending.popLast() {
            if c == "." { continue }
            if c == ".." {
                if !done.isEmpty { done.removeLast() }
                continue
            }
            let candidate = "/" + (done + [c]).joined(separator: "/")
            var st = stat()
            guard lstat(candidate, &st) == 0, st.st_mode & S_IFMT == S_IFLNK else {
                done.append(c)
                continue
            }
            links += 1
            guard links <= 40, let target = readLink(candidate) else { return nil }
            if target.hasPrefix("/") { done = [] }
            pending += components(target).reversed()
        }
        return "/" + done.joined(separator: "/")
    }

    /// `path` made absolute with `.` and `..` applied to the text alone (no symlinks): what
    /// the path would mean if nothing on the way were a symlink.
    static func lexical(_ path: String) -> String {
        var done: [Substring] = []
        for c in components(absolute(path)) {
            if c == "." { continue }
            if c == ".." { if !done.isEmpty { done.removeLast() }; continue }
            done.append(c)
        }
        return "/" + done.joined(separator: "/")
    }

    private static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        return currentDirectory() + "/" + path
    }

    private static func components(_ path: String) -> [Substring] {
        path.split(separator: "/", omittingEmptySubsequences: true)
    }

    private static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: - Describing

    /// One line per category, for the REPL's `:limits`: what is granted, and how to
    /// grant what is not.
    public var summary: [String] {
        func roots(_ r: [Root], _ option: String) -> String {
            r.isEmpty ? "nothing (\(option)=PATH)" : r.map(\.typed).joined(separator: ", ")
        }
        var lines = [
            "read     \(roots(read, "--allow-read"))",
            "write    \(roots(write, "--allow-write"))",
            "exec     \(exec ? "allowed" : "denied (--allow-exec)")",
            "env      \(env ? "allowed" : "denied (--allow-env)")",
            "net      \(net.isEmpty ? "nothing (--allow-net=HOST[:PORT])" : net.map(\.typed).joined(separator: ", "))",
            "native   \(native ? "allowed" : "denied (--allow-native)")",
        ]
        if !moduleRoots.isEmpty {
            lines.append("modules  also from \(moduleRoots.map(\.resolved).joined(separator: ", "))")
        }
        return lines
    }
}

/// A permission option that cannot be honoured (a root that does not exist, a host that
/// cannot be read): a usage error.
public struct PermissionError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
