import ArgumentParser
import ScopeLua

/// `--sandbox` and the `--allow-*` options, shared by `run` and `repl` (README,
/// "Permissions"). Without `--sandbox` nothing is checked, as under stock Lua, so an
/// `--allow-*` alone would grant what is already granted: a usage error naming the fix.
struct PermissionOptions: ParsableArguments {
    @Flag(help: "Deny scripts every file, command, environment variable, host and native module not granted by an --allow-* option below; also takes away what could lift it (debug.sethook, debug.getregistry, ...; README, \"Permissions\"). The script file itself and the runner's --input, --output, --dead-letter and --checkpoint are opened by the runner, not checked.")
    var sandbox = false

    @Option(name: .customLong("allow-read"), help: ArgumentHelp("With --sandbox: let scripts read files under PATH (a directory or a file; comma-separated or repeated; each must exist). Paths are compared after resolving '..' and symlinks.", valueName: "PATH[,PATH...]"))
    var allowRead: [String] = []

    @Option(name: .customLong("allow-write"), help: ArgumentHelp("With --sandbox: let scripts create, change, rename and remove files under PATH (comma-separated or repeated; each must exist).", valueName: "PATH[,PATH...]"))
    var allowWrite: [String] = []

    @Flag(name: .customLong("allow-exec"), help: "With --sandbox: let scripts run commands (os.execute, io.popen). A command can do anything the process can.")
    var allowExec = false

    @Flag(name: .customLong("allow-env"), help: "With --sandbox: let scripts read environment variables (os.getenv).")
    var allowEnv = false

    @Option(name: .customLong("allow-net"), help: ArgumentHelp("With --sandbox: let scripts connect to HOST (any port) or HOST:PORT (redis.connect), compared as written in the URL, without name resolution (comma-separated or repeated; [v6]:PORT for IPv6).", valueName: "HOST[:PORT][,...]"))
    var allowNet: [String] = []

    @Flag(name: .customLong("allow-native"), help: "With --sandbox: let scripts load native code (require of a C module, package.loadlib). Native code can do anything the process can.")
    var allowNative = false

    /// The options' long names, for the runner's options after the script.
    static let names = ["--sandbox", "--allow-read", "--allow-write", "--allow-exec", "--allow-env", "--allow-net", "--allow-native"]

    /// Takes `name` (with its value) when it is one of these options; false otherwise.
    mutating func take(_ name: String, _ value: () throws -> String) throws -> Bool {
        switch name {
        case "--sandbox": sandbox = true
        case "--allow-read": allowRead.append(try value())
        case "--allow-write": allowWrite.append(try value())
        case "--allow-exec": allowExec = true
        case "--allow-env": allowEnv = true
        case "--allow-net": allowNet.append(try value())
        case "--allow-native": allowNative = true
        default: return false
        }
        return true
    }

    /// The permissions to run with: nil without --sandbox. Roots that do not exist, an
    /// unreadable host, or an --allow-* without --sandbox are usage errors.
    func permissions() throws -> Permissions? {
        let given: [(Bool, String)] = [(!allowRead.isEmpty, "--allow-read"), (!allowWrite.isEmpty, "--allow-write"),
                                       (allowExec, "--allow-exec"), (allowEnv, "--allow-env"),
                                       (!allowNet.isEmpty, "--allow-net"), (allowNative, "--allow-native")]
        guard sandbox else {
            if let first = given.first(where: { $0.0 }) {
                throw ValidationError("\(first.1) needs --sandbox (without it everything is allowed)")
            }
            return nil
        }
        do {
            return try Permissions(read: Permissions.list(allowRead, option: "--allow-read"),
                                   write: Permissions.list(allowWrite, option: "--allow-write"),
                                   net: Permissions.list(allowNet, option: "--allow-net"),
                                   exec: allowExec, env: allowEnv, native: allowNative)
        } catch let error as PermissionError {
            throw ValidationError(error.description)
        }
    }
}
