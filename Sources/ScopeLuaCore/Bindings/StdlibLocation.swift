#if canImport(Glibc)
import Glibc
#endif

/// Where the Lua modules shipped with scopelua (`stdlib/`) are found: relative to the
/// executable that is running, never a path of the machine that built it, so that an
/// installed binary finds the modules installed with it, and one built in a clone finds
/// the clone's.
package enum StdlibLocation {
    /// The installed layout, relative to the prefix: `PREFIX/bin/scopelua` finds
    /// `PREFIX/share/scopelua/stdlib` (the modules are Lua source, architecture-independent
    /// data, which the FHS puts under share/; Debian's own Lua modules are in
    /// /usr/share/lua/5.4). scripts/install.sh installs there.
    package static let installed = "share/scopelua/stdlib"

    /// `SCOPELUA_STDLIB` (`environment`) if set, else the host's explicit
    /// `RuntimeOptions.stdlibPath`, else the first of `candidates` for this process's
    /// executable that is a directory; nil if there is none.
    package static func directory(environment: String?, explicit: String?) -> String? {
        if let environment { return environment }
        if let explicit { return explicit }
        return besideExecutable
    }

    /// Looked up once per process: the executable does not move while it runs.
    static let besideExecutable: String? = executablePath().flatMap { executable in
        candidates(executable: executable).first(where: isDirectory)
    }

    /// The directories to try, in order, for the executable at the absolute path
    /// `executable` (symbolic links resolved, as /proc/self/exe gives it):
    /// 1. the installed layout: `<prefix>/bin/scopelua` → `<prefix>/share/scopelua/stdlib`;
    /// 2. the development layout: a binary under a clone's build directory (`.build`,
    ///    or a scratch path such as `.build-asan`, `.build-static`; the test runner too) →
    ///    the clone's `stdlib/`.
    /// A relative path gives none.
    package static func candidates(executable: String) -> [String] {
        guard executable.hasPrefix("/") else { return [] }
        let directory = executable.split(separator: "/").dropLast()
        var result: [String] = []
        if !directory.isEmpty {
            result.append(absolute(directory.dropLast() + installed.split(separator: "/")))
        }
        if let build = directory.lastIndex(where: { $0 == ".build" || $0.hasPrefix(".build-") }) {
            result.append(absolute(directory[..<build] + ["stdlib"]))
        }
        return result
    }

    private static func absolute(_ components: some Sequence<Substring>) -> String {
        "/" + components.joined(separator: "/")
    }

    /// The running executable's path (Linux: /proc/self/exe); nil if it cannot be read.
    static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count)
        guard count > 0, count < buffer.count else { return nil }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }
}
