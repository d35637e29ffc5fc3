import CLua
import CScopeLua
import CSQLite
import ScopeLuaCore

/// A SQLite connection (`sql.open`, kind `"sqlite"`). It owns its statements and
/// transactions: releasing it releases them first (newest first; transactions roll
/// back), then closes the connection.
final class Database: Resource {
    private(set) var db: OpaquePointer?
    let busyTimeout: Int32
    /// Statements prepared for `db:exec` / `db:first`, keyed by SQL text in a Lua table
    /// (registry reference): SQL strings hash once, so a lookup costs a table get.
    var cacheRef: Int32 = LUA_NOREF
    var cached: [OpaquePointer] = []
    /// Open transactions on this connection, innermost last (savepoints nest).
    var transactions: [Handle] = []
    private var savepoints = 0
    /// `--sandbox`: the authorizer's state (kept alive as long as the connection).
    var sandbox: SQLSandbox?

    init(path: String, db: OpaquePointer, busyTimeout: Int32) {
        self.db = db
        self.busyTimeout = busyTimeout
        super.init(label: path)
    }

    func nextSavepoint() -> String {
        savepoints += 1
        return "scopelua_\(savepoints)"
    }

    /// SQLite's message for the last error, with what a user needs to act on it.
    func errorMessage(_ code: Int32) -> String {
        // The sandbox's authorizer refused something: say what and why, not "not authorized".
        if let denial = sandbox?.takeDenial() { return denial }
        let base = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(code))
        if code & 0xff == SQLITE_BUSY {
            return "\(base) (still busy after the \(busyTimeout) ms busy_timeout)"
        }
        return base
    }

    /// Runs SQL with no parameters and no results (BEGIN, COMMIT, PRAGMA). Returns the
    /// error message on failure.
    func execute(_ sql: String) -> String? {
        guard let db else { return "the connection is closed" }
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &err)
        guard rc != SQLITE_OK else { return nil }
        defer { sqlite3_free(err) }
        return err.map { String(cString: $0) } ?? errorMessage(rc)
    }

    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        Lua.reserve(L, 2, for: "closing a database")
        for stmt in cached { sqlite3_finalize(stmt) }
        cached = []
        luaL_unref(L, Lua.registry, cacheRef)
        cacheRef = LUA_NOREF
        guard let db else { return true }
        self.db = nil
        let rc = sqlite3_close(db)
        guard rc == SQLITE_OK else {
            Lua.push(L, "release of \(runtime.describe(handle)) failed: \(String(cString: sqlite3_errstr(rc)))")
            _ = sqlite3_close_v2(db)
            return false
        }
        return true
    }
}

/// A prepared statement (`db:prepare`, and the cursor of `db:rows`; kind
/// `"statement"`). A child of its connection and a member of the current scope.
final class Statement: Resource {
    private(set) var stmt: OpaquePointer?
    unowned(unsafe) let database: Database  // its owner, released after it
    /// A `db:rows` cursor: finalized when the loop reaches the end (a prepared
    /// statement is only reset, to be used again).
    var finalizesAtEnd = false

    init(sql: String, stmt: OpaquePointer, database: Database) {
        self.stmt = stmt
        self.database = database
        super.init(label: sql)
    }

    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        if let stmt { sqlite3_finalize(stmt) }
        stmt = nil
        return true
    }
}

/// A transaction (`db:transaction`, kind `"transaction"`): BEGIN, or a SAVEPOINT when
/// one is already open. Released normally it commits; released with an error, by its
/// connection's release, by the collector, or by `:rollback()`, it rolls back.
final class Transaction: Resource {
    unowned(unsafe) let database: Database
    /// The savepoint name, or nil for the outermost transaction.
    let savepoint: String?
    var rollbackRequested = false

    /// The SQL that undoes this transaction (or savepoint) and ends it.
    private var rollbackSQL: String {
        savepoint.map { "ROLLBACK TO \($0); RELEASE \($0)" } ?? "ROLLBACK"
    }

    init(database: Database, savepoint: String?) {
        self.database = database
        self.savepoint = savepoint
        super.init(label: savepoint.map { "savepoint \($0)" } ?? "transaction")
    }

    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        Lua.reserve(L, 2, for: "ending a transaction")
        if let i = database.transactions.lastIndex(of: handle) { database.transactions.remove(at: i) }
        let how = handle.pointee.how
        let rollback = rollbackRequested || errIndex != 0
            || how == Int32(SL_BY_PARENT) || how == Int32(SL_BY_GC)
        if rollback {
            guard let problem = database.execute(rollbackSQL) else { return true }
            Lua.push(L, "rollback of \(runtime.describe(handle)) failed: \(problem)")
            return false
        }
        let sql = savepoint.map { "RELEASE \($0)" } ?? "COMMIT"
        guard let problem = database.execute(sql) else { return true }
        // A failed COMMIT leaves the transaction open: roll back so the connection is usable.
        _ = database.execute(rollbackSQL)
        Lua.push(L, "commit of \(runtime.describe(handle)) failed (rolled back): \(problem)")
        return false
    }
}

/// The SQLite library scopelua is linked with.
package enum SQLiteLibrary {
    /// Its version as the library loaded at run time reports it (`3.40.1`), which is
    /// what `SELECT sqlite_version()` returns too.
    package static var version: String { String(cString: sqlite3_libversion()) }
}
