import CSQLite
import ScopeLuaCore

/// `--sandbox` for SQLite: what `sql.open` may open, and an authorizer on every
/// connection so that SQL cannot open files the script could not (`ATTACH`, and `VACUUM
/// INTO`, which SQLite authorizes as an ATTACH of its target). README, "Permissions".
final class SQLSandbox {
    let permissions: Permissions
    let readonly: Bool
    /// The denial behind SQLite's "not authorized", reported instead of it (taken once).
    private var denial: String?

    init(permissions: Permissions, readonly: Bool) {
        self.permissions = permissions
        self.readonly = readonly
    }

    /// Nil when `path` may be opened (readonly: read; else read and write); else the
    /// denial. `:memory:` and `""` (a private temporary database) touch no named file;
    /// a URI filename (`file:...`, which this SQLite honours) would need its own parser
    /// and is refused.
    static func denial(_ permit: (Permissions.Access, String) -> String?, _ path: String, readonly: Bool) -> String? {
        if path == ":memory:" || path.isEmpty { return nil }
        if path.hasPrefix("file:") {
            return "permission denied: SQLite URI file name \"\(path)\" (not available under --sandbox; give a plain path)"
        }
        if !readonly, let d = permit(.write, path) { return d }
        return permit(.read, path)
    }

    /// Installs the authorizer on `db`; the connection keeps this object alive.
    func install(on db: OpaquePointer) {
        sqlite3_set_authorizer(db, { context, action, arg1, _, _, _ in
            guard let context else { return SQLITE_DENY }
            let sandbox = Unmanaged<SQLSandbox>.fromOpaque(context).takeUnretainedValue()
            return sandbox.authorize(action, arg1.map { String(cString: $0) })
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    private func authorize(_ action: Int32, _ arg1: String?) -> Int32 {
        switch action {
        case SQLITE_ATTACH:
            // A name computed by the statement (a bound parameter, an expression) is not
            // given to the authorizer when the ATTACH is prepared: it cannot be checked.
            guard let name = arg1 else {
                denial = "permission denied: ATTACH of a file name the statement computes (write the name as a string literal under --sandbox)"
                return SQLITE_DENY
            }
            if let d = Self.denial(permissions.denial, name, readonly: readonly) {
                denial = d
                return SQLITE_DENY
            }
            return SQLITE_OK
        case SQLITE_PRAGMA:
            // Moves every connection's temporary files, process-wide (deprecated).
            if arg1?.lowercased() == "temp_store_directory" || arg1?.lowercased() == "data_store_directory" {
                denial = "permission denied: PRAGMA \(arg1 ?? "") (not available under --sandbox)"
                return SQLITE_DENY
            }
            return SQLITE_OK
        default:
            return SQLITE_OK
        }
    }

    /// The denial an authorizer refusal stands for, once.
    func takeDenial() -> String? {
        defer { denial = nil }
        return denial
    }
}
