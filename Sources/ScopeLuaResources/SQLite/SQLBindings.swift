import CLua
import CScopeLua
import CSQLite
import ScopeLuaCore

/// The SQLite module's state on a runtime (see `RuntimeModule`).
final class SQLState {
    /// Identity of the metatable of `sql.blob` values.
    var blobMetatable: UnsafeRawPointer?
}

extension Runtime {
    var sqlState: SQLState { state(SQLState.self) { SQLState() } }
}

/// The `sql` module: SQLite connections, statements and transactions owned by the runtime.
package enum SQLBindings: RuntimeModule {
    package static func install(_ rt: Runtime, _ L: LuaState) {
        HandleBindings.makeMetatable(rt, L, kind: .sqlite, methods: [
            ("exec", dbExec), ("first", dbFirst), ("rows", dbRows), ("prepare", prepare),
            ("transaction", transaction), ("close", HandleBindings.release),
        ])
        HandleBindings.makeMetatable(rt, L, kind: .statement, methods: [
            ("exec", stmtExec), ("first", stmtFirst), ("rows", stmtRows), ("close", HandleBindings.release),
        ])
        HandleBindings.makeMetatable(rt, L, kind: .transaction, methods: [
            ("commit", commit), ("rollback", rollback),
        ])
        // sql.blob values: a userdata whose user value is the bytes.
        lua_createtable(L, 0, 2)
        Lua.push(L, "sql.blob")
        Lua.setField(L, -2, "__name")
        Lua.setFunction(L, -1, "__tostring", blobToString)
        rt.sqlState.blobMetatable = lua_topointer(L, -1)
        Lua.setRegistryField(L, "scopelua.blob")
        // Closing value of `stmt:rows()` loops: resets the statement when the loop ends.
        lua_createtable(L, 0, 1)
        Lua.setFunction(L, -1, "__close", resetCursor)
        Lua.setRegistryField(L, "scopelua.cursor")

        lua_createtable(L, 0, 2)
        Lua.setFunction(L, -1, "open", open)
        Lua.setFunction(L, -1, "blob", blob)
        Bindings.publishModule(L, "sql")
    }

    // MARK: - sql.open, sql.blob

    /// sql.open(path [, { busy_timeout = ms, readonly = bool, wal = bool }]) → Db, or nil, message.
    static let open: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let path = Lua.string(L, 1) else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
        var busy: Int32 = 5000, readonly = false, wal = path != ":memory:" && !path.isEmpty
        switch lua_type(L, 2) {
        case LUA_TNONE, LUA_TNIL: break
        case LUA_TTABLE:
            if Lua.rawField(L, 2, "busy_timeout") != LUA_TNIL {
                // SQLite takes an int: a larger value is refused, not clamped.
                guard lua_isinteger(L, -1) != 0, let ms = Int32(exactly: lua_tointegerx(L, -1, nil)), ms >= 0 else {
                    Lua.pushArgError(L, 2, "busy_timeout must be an integer between 0 and 2147483647 (milliseconds)")
                    return raise
                }
                busy = ms
            }
            if Lua.rawField(L, 2, "readonly") != LUA_TNIL { readonly = lua_toboolean(L, -1) != 0 }
            if Lua.rawField(L, 2, "wal") != LUA_TNIL { wal = wal && lua_toboolean(L, -1) != 0 }
            lua_settop(L, 2)
        default:
            Lua.pushTypeError(L, 2, "table")
            return raise
        }
        if readonly { wal = false }
        if rt.isSandboxed, let denial = SQLSandbox.denial(rt.permit, path, readonly: readonly) {
            Lua.pushError(L, denial)
            return raise
        }
        var handle: OpaquePointer?
        let flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let db = handle else {
            let reason = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_close(handle)
            lua_pushnil(L)
            Lua.push(L, "cannot open database \"\(path)\": \(reason)")
            lua_pushvalue(L, -1)
            Lua.setRegistryField(L, SL_LASTFAILURE)  // for with_resource(sql.open(p), fn)
            return 2
        }
        sqlite3_busy_timeout(db, busy)
        let database = Database(path: path, db: db, busyTimeout: busy)
        if let permissions = rt.options.permissions {
            let sandbox = SQLSandbox(permissions: permissions, readonly: readonly)
            sandbox.install(on: db)
            database.sandbox = sandbox
        }
        if wal, let problem = database.execute("PRAGMA journal_mode=WAL") {
            sqlite3_close(db)
            lua_pushnil(L)
            Lua.push(L, "cannot open database \"\(path)\": \(problem)")
            return 2
        }
        let site = rt.currentSite(L)
        lua_createtable(L, 0, 8)
        database.cacheRef = luaL_ref(L, Lua.registry)
        rt.acquire(.sqlite, database, L, site: site, labelIndex: 1)
        return 1
    }

    static let blob: SwiftLuaFunction = { L in
        let (_, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TSTRING else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
        _ = lua_newuserdatauv(L, 0, 1)
        lua_pushvalue(L, 1)
        lua_setiuservalue(L, -2, 1)
        Lua.getRegistryField(L, "scopelua.blob")
        _ = lua_setmetatable(L, -2)
        return 1
    }

    static let blobToString: SwiftLuaFunction = { L in
        guard let L else { return 0 }
        lua_getiuservalue(L, 1, 1)
        let n = lua_rawlen(L, -1)
        Lua.push(L, "sql.blob (\(n) bytes)")
        return 1
    }

    // MARK: - Connection methods

    /// The open connection at index 1, or an error pushed.
    static func database(_ rt: Runtime, _ L: LuaState) -> (Handle, Database)? {
        guard let h = HandleBindings.checkOpen(rt, L, 1, kind: .sqlite),
              let db = h.pointee.resource as? Database, db.db != nil else { return nil }
        return (h, db)
    }

    /// The SQL text at index 2, or a type error pushed.
    static func sqlText(_ L: LuaState) -> Bool {
        guard lua_type(L, 2) == LUA_TSTRING else {
            Lua.pushTypeError(L, 2, "string")
            return false
        }
        return true
    }

    /// db:exec(sql, ...) → number of rows changed. Several statements may be given; the
    /// parameters are consumed in order.
    static let dbExec: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (_, db) = database(rt, L), sqlText(L), let conn = db.db else { return raise }
        let before = sqlite3_total_changes64(conn)
        // Fast path: one cached statement.
        let top = lua_gettop(L)
        if let stmt = cachedStatement(db, L) {
            defer { sqlite3_clear_bindings(stmt) }  // bound for this call only
            guard bind(stmt, L, db, first: 3, count: lua_gettop(L) - 2, exact: true, lifetime: .call),
                  step(stmt, L, db, sqlIndex: 2) else { return raise }
            lua_pushinteger(L, lua_Integer(sqlite3_total_changes64(conn) - before))
            return 1
        }
        if lua_gettop(L) > top { return raise }  // an error was pushed while preparing
        var len = 0
        guard let text = lua_tolstring(L, 2, &len) else { return raise }
        var tail: UnsafePointer<CChar>? = text
        let end = text + len
        var next: Int32 = 3
        let last = lua_gettop(L)
        guard let length = sqlLength(L, len) else { return raise }
        while let start = tail, start < end {
            var stmt: OpaquePointer?
            let rc = sqlite3_prepare_v2(conn, start, length - Int32(start - text), &stmt, &tail)
            guard rc == SQLITE_OK else {
                pushSQLError(L, db, rc, sqlIndex: 2)
                return raise
            }
            guard let stmt else { continue }  // whitespace or a comment
            defer { sqlite3_finalize(stmt) }
            let wanted = sqlite3_bind_parameter_count(stmt)
            guard bind(stmt, L, db, first: next, count: min(wanted, last - next + 1), exact: false, lifetime: .call),
                  step(stmt, L, db, sqlIndex: 2) else { return raise }
            next += wanted
        }
        if next <= last {
            Lua.pushError(L, "SQL expects \(next - 3) parameters, got \(last - 2)")
            return raise
        }
        lua_pushinteger(L, lua_Integer(sqlite3_total_changes64(conn) - before))
        return 1
    }

    /// db:first(sql, ...) → the first row as a table, or nil.
    static let dbFirst: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (_, db) = database(rt, L), sqlText(L) else { return raise }
        let top = lua_gettop(L)
        guard let stmt = cachedStatement(db, L) else {
            if lua_gettop(L) == top { Lua.pushError(L, "first takes a single SQL statement") }
            return raise
        }
        defer { sqlite3_clear_bindings(stmt) }  // bound for this call only
        guard bind(stmt, L, db, first: 3, count: lua_gettop(L) - 2, exact: true, lifetime: .call) else { return raise }
        return firstRow(stmt, L, db, sqlIndex: 2)
    }

    /// db:rows(sql, ...) → iterator, statement, nil, statement: the statement is the
    /// loop's closing value, so it is finalized when the loop ends, breaks or errors.
    static let dbRows: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (h, db) = database(rt, L), sqlText(L) else { return raise }
        guard let stmtHandle = newStatement(rt, L, h, db, loop: true) else { return raise }
        guard let stmt = (stmtHandle.pointee.resource as? Statement)?.stmt,
              bind(stmt, L, db, first: 3, count: lua_gettop(L) - 3, exact: true, lifetime: .loop) else {
            rt.release(stmtHandle, L, cause: .handle(rt.currentSite(L)), error: 0)
            return raise
        }
        let handleIndex = lua_gettop(L)
        Lua.push(L, rowsStep)
        lua_pushvalue(L, handleIndex)
        lua_pushnil(L)
        lua_pushvalue(L, handleIndex)
        return 4
    }

    /// db:prepare(sql) → Statement, reusable with :exec, :first, :rows.
    static let prepare: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (h, db) = database(rt, L), sqlText(L) else { return raise }
        guard newStatement(rt, L, h, db, loop: false) != nil else { return raise }
        return 1
    }

    /// Prepares the SQL at index 2 as a statement handle (child of the connection,
    /// member of the current scope) and pushes it.
    static func newStatement(_ rt: Runtime, _ L: LuaState, _ dbHandle: Handle, _ db: Database, loop: Bool) -> Handle? {
        guard let conn = db.db else { return nil }
        var len = 0
        guard let text = lua_tolstring(L, 2, &len), let length = sqlLength(L, len) else { return nil }
        var stmt: OpaquePointer?
        var tail: UnsafePointer<CChar>?
        let flags = UInt32(loop ? 0 : SQLITE_PREPARE_PERSISTENT)
        let rc = sqlite3_prepare_v3(conn, text, length, flags, &stmt, &tail)
        guard rc == SQLITE_OK else {
            pushSQLError(L, db, rc, sqlIndex: 2)
            return nil
        }
        guard let stmt else {
            Lua.pushError(L, "no SQL statement in \"\(Lua.string(L, 2) ?? "")\"")
            return nil
        }
        if let tail, tail < text + len, !String(cString: tail).allSatisfy(\.isWhitespace) {
            sqlite3_finalize(stmt)
            Lua.pushError(L, "only one SQL statement can be prepared (extra text: \"\(String(cString: tail))\")")
            return nil
        }
        let record = Statement(sql: Lua.string(L, 2) ?? "", stmt: stmt, database: db)
        record.finalizesAtEnd = loop
        let h = rt.acquire(.statement, record, L, site: rt.currentSite(L), labelIndex: 2)
        rt.adopt(h, by: dbHandle)
        return h
    }

    /// db:transaction() → Transaction: BEGIN, or SAVEPOINT inside an open one.
    static let transaction: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (h, db) = database(rt, L) else { return raise }
        let outer = db.transactions.last
        let savepoint = outer == nil ? nil : db.nextSavepoint()
        if let problem = db.execute(savepoint.map { "SAVEPOINT \($0)" } ?? "BEGIN") {
            Lua.pushError(L, problem)
            return raise
        }
        let tx = Transaction(database: db, savepoint: savepoint)
        let txHandle = rt.acquire(.transaction, tx, L, site: rt.currentSite(L))
        rt.adopt(txHandle, by: outer ?? h)
        db.transactions.append(txHandle)
        return 1
    }

    // MARK: - Statement methods

    static func statement(_ rt: Runtime, _ L: LuaState) -> (Statement, OpaquePointer)? {
        guard let h = HandleBindings.checkOpen(rt, L, 1, kind: .statement),
              let s = h.pointee.resource as? Statement, let stmt = s.stmt else { return nil }
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
        return (s, stmt)
    }

    /// stmt:exec(...) → number of rows changed.
    static let stmtExec: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (s, stmt) = statement(rt, L), let conn = s.database.db else { return raise }
        let before = sqlite3_total_changes64(conn)
        defer { sqlite3_clear_bindings(stmt) }  // bound for this call only
        guard bind(stmt, L, s.database, first: 2, count: lua_gettop(L) - 1, exact: true, lifetime: .call),
              step(stmt, L, s.database, sql: s.label) else { return raise }
        lua_pushinteger(L, lua_Integer(sqlite3_total_changes64(conn) - before))
        return 1
    }

    /// stmt:first(...) → the first row, or nil.
    static let stmtFirst: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (s, stmt) = statement(rt, L) else { return raise }
        defer { sqlite3_clear_bindings(stmt) }  // bound for this call only
        guard bind(stmt, L, s.database, first: 2, count: lua_gettop(L) - 1, exact: true, lifetime: .call) else { return raise }
        return firstRow(stmt, L, s.database, sql: s.label)
    }

    /// stmt:rows(...) → iterator, statement, nil, cursor: the cursor resets the
    /// statement when the loop ends (the statement itself stays for reuse).
    static let stmtRows: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (s, stmt) = statement(rt, L) else { return raise }
        guard bind(stmt, L, s.database, first: 2, count: lua_gettop(L) - 1, exact: true, lifetime: .loop) else { return raise }
        Lua.push(L, rowsStep)
        lua_pushvalue(L, 1)
        lua_pushnil(L)
        lua_createtable(L, 1, 0)
        lua_pushvalue(L, 1)
        lua_rawseti(L, -2, 1)
        Lua.getRegistryField(L, "scopelua.cursor")
        _ = lua_setmetatable(L, -2)
        return 4
    }

    static let resetCursor: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TTABLE else { return 0 }
        lua_rawgeti(L, 1, 1)
        if let s = rt.handle(at: -1, L, kind: .statement)?.pointee.resource as? Statement, let stmt = s.stmt {
            sqlite3_reset(stmt)
        }
        return 0
    }

    /// One step of a rows loop: the statement handle is the loop state.
    static let rowsStep: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = HandleBindings.checkOpen(rt, L, 1, kind: .statement),
              let s = h.pointee.resource as? Statement, let stmt = s.stmt else { return raise }
        let rc = sqlite3_step(stmt)
        switch rc {
        case SQLITE_ROW:
            guard pushRow(stmt, L) else {
                sqlite3_reset(stmt)
                return raise
            }
            return 1
        case SQLITE_DONE:
            if s.finalizesAtEnd {
                rt.release(h, L, cause: .handle(rt.currentSite(L)), error: 0)
                rt.retire(h, L, 1)
            } else {
                sqlite3_reset(stmt)
            }
            lua_pushnil(L)
            return 1
        default:
            pushSQLError(L, s.database, rc, sql: s.label)
            sqlite3_reset(stmt)
            return raise
        }
    }

    // MARK: - Transactions

    /// tx:commit() → true; the transaction is released.
    static let commit: SwiftLuaFunction = { L in
        finish(L, rollback: false)
    }

    /// tx:rollback() → true; the transaction is released.
    static let rollback: SwiftLuaFunction = { L in
        finish(L, rollback: true)
    }

    static func finish(_ L: LuaState?, rollback: Bool) -> Int32 {
        let (rt, L) = Runtime.from(L)
        guard let h = HandleBindings.checkOpen(rt, L, 1, kind: .transaction),
              let tx = h.pointee.resource as? Transaction else { return raise }
        tx.rollbackRequested = rollback
        let failures = rt.release(h, L, cause: .handle(rt.currentSite(L)), error: 0)
        rt.retire(h, L, 1)
        if rt.mergeErrors(L, primary: 0, failures: failures) { return raise }
        lua_pushboolean(L, 1)
        return 1
    }

    // MARK: - Statement plumbing

    /// The cached prepared statement for the single statement at index 2, reset, or nil
    /// when the text holds several statements (or an error was pushed: then the stack
    /// grew by one).
    static func cachedStatement(_ db: Database, _ L: LuaState) -> OpaquePointer? {
        guard let conn = db.db else { return nil }
        lua_rawgeti(L, Lua.registry, lua_Integer(db.cacheRef))
        lua_pushvalue(L, 2)
        if lua_rawget(L, -2) == LUA_TLIGHTUSERDATA, let p = lua_touserdata(L, -1) {
            sl_pop(L, 2)
            let stmt = OpaquePointer(p)
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
            return stmt
        }
        sl_pop(L, 1)  // keep the cache table on top for the insert below
        var len = 0
        guard let text = lua_tolstring(L, 2, &len) else {
            sl_pop(L, 1)
            return nil
        }
        guard let length = sqlLength(L, len) else {
            sl_remove(L, -2)  // the cache table; the error stays on top
            return nil
        }
        var stmt: OpaquePointer?
        var tail: UnsafePointer<CChar>?
        let rc = sqlite3_prepare_v3(conn, text, length, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, &tail)
        guard rc == SQLITE_OK, let stmt else {
            sl_pop(L, 1)
            if rc != SQLITE_OK { pushSQLError(L, db, rc, sqlIndex: 2) }
            return nil
        }
        if let tail, tail < text + len, !String(cString: tail).allSatisfy(\.isWhitespace) {
            sqlite3_finalize(stmt)  // several statements: the slow path runs them in turn
            sl_pop(L, 1)
            return nil
        }
        if db.cached.count >= 64 {  // bounded: start over rather than grow without end
            for old in db.cached { sqlite3_finalize(old) }
            db.cached = []
            sl_pop(L, 1)
            luaL_unref(L, Lua.registry, db.cacheRef)
            lua_createtable(L, 0, 8)
            lua_pushvalue(L, -1)
            db.cacheRef = luaL_ref(L, Lua.registry)
        }
        db.cached.append(stmt)
        lua_pushvalue(L, 2)
        lua_pushlightuserdata(L, UnsafeMutableRawPointer(stmt))
        lua_rawset(L, -3)
        sl_pop(L, 1)
        return stmt
    }

    /// How long bound values are used: by this call only (the arguments are on the
    /// stack until it returns, and the caller clears the bindings before it does), or
    /// by a rows loop that steps after the call returned, while the loop body may
    /// collect the arguments: then SQLite copies the bytes.
    enum BindLifetime { case call, loop }

    /// The length of a SQL text as the `int` SQLite's prepare functions take, or nil
    /// with an error pushed when it is longer (a conversion would trap).
    static func sqlLength(_ L: LuaState, _ len: Int) -> Int32? {
        guard let length = Int32(exactly: len) else {
            Lua.pushError(L, "SQL text too long (\(len) bytes; at most \(Int32.max))")
            return nil
        }
        return length
    }

    /// Binds `count` Lua values from stack index `first` to the statement's parameters.
    /// With `exact`, the count must match. Pushes an error and returns false on failure.
    static func bind(_ stmt: OpaquePointer, _ L: LuaState, _ db: Database, first: Int32, count: Int32, exact: Bool,
                     lifetime: BindLifetime) -> Bool {
        let bytes = lifetime == .call ? scopelua_sqlite_static() : scopelua_sqlite_transient()
        let wanted = sqlite3_bind_parameter_count(stmt)
        if exact, count != wanted {
            Lua.pushError(L, "SQL expects \(wanted) parameter\(wanted == 1 ? "" : "s"), got \(count)")
            return false
        }
        var i: Int32 = 0
        while i < count {
            let idx = first + i
            let param = i + 1
            var rc: Int32
            switch lua_type(L, idx) {
            case LUA_TNIL:
                rc = sqlite3_bind_null(stmt, param)
            case LUA_TBOOLEAN:
                rc = sqlite3_bind_int64(stmt, param, lua_toboolean(L, idx) != 0 ? 1 : 0)
            case LUA_TNUMBER:
                if lua_isinteger(L, idx) != 0 {
                    rc = sqlite3_bind_int64(stmt, param, lua_tointegerx(L, idx, nil))
                } else {
                    rc = sqlite3_bind_double(stmt, param, lua_tonumberx(L, idx, nil))
                }
            case LUA_TSTRING:
                var len = 0
                let p = lua_tolstring(L, idx, &len)
                rc = sqlite3_bind_text64(stmt, param, p, sqlite3_uint64(len), bytes, UInt8(SQLITE_UTF8))
            case LUA_TUSERDATA where isBlob(L, idx):
                lua_getiuservalue(L, idx, 1)
                var len = 0
                let p = lua_tolstring(L, -1, &len)
                // The blob (an argument) holds its bytes as its user value.
                rc = sqlite3_bind_blob64(stmt, param, p, sqlite3_uint64(len), bytes)
                sl_pop(L, 1)
            default:
                let type = Lua.typeName(L, idx)
                Lua.pushError(L, "SQL parameter \(param): cannot bind a \(type) (use nil, a boolean, a number, a string or sql.blob(s))")
                return false
            }
            if rc != SQLITE_OK {
                Lua.pushError(L, "SQL parameter \(param): \(db.errorMessage(rc))")
                return false
            }
            i += 1
        }
        return true
    }

    static func isBlob(_ L: LuaState, _ idx: Int32) -> Bool {
        guard lua_getmetatable(L, idx) != 0 else { return false }
        defer { sl_pop(L, 1) }
        let (rt, _) = Runtime.from(L)
        return lua_topointer(L, -1) == rt.sqlState.blobMetatable
    }

    /// Steps to completion, then resets. Pushes an error and returns false on failure.
    static func step(_ stmt: OpaquePointer, _ L: LuaState, _ db: Database, sqlIndex: Int32 = 0, sql: String? = nil) -> Bool {
        var rc = sqlite3_step(stmt)
        while rc == SQLITE_ROW { rc = sqlite3_step(stmt) }
        guard rc == SQLITE_DONE else {
            pushSQLError(L, db, rc, sqlIndex: sqlIndex, sql: sql)
            sqlite3_reset(stmt)
            return false
        }
        sqlite3_reset(stmt)
        return true
    }

    /// Pushes the first row (or nil), then resets; or raises the step error.
    static func firstRow(_ stmt: OpaquePointer, _ L: LuaState, _ db: Database, sqlIndex: Int32 = 0, sql: String? = nil) -> Int32 {
        let rc = sqlite3_step(stmt)
        defer { sqlite3_reset(stmt) }
        switch rc {
        case SQLITE_ROW: if !pushRow(stmt, L) { return raise }
        case SQLITE_DONE: lua_pushnil(L)
        default:
            pushSQLError(L, db, rc, sqlIndex: sqlIndex, sql: sql)
            return raise
        }
        return 1
    }

    /// Pushes the current row as { column = value } (NULL columns are absent) and
    /// returns true; or, when SQLite has no name for a column (it returns NULL when out
    /// of memory, and a nil key would make lua_rawset raise through this Swift frame),
    /// pushes an error and returns false. `columnName` is SQLite's, except in tests.
    static func pushRow(_ stmt: OpaquePointer, _ L: LuaState,
                        columnName: (OpaquePointer, Int32) -> UnsafePointer<CChar>? = { sqlite3_column_name($0, $1) }) -> Bool {
        let n = sqlite3_column_count(stmt)
        lua_createtable(L, 0, n)
        for i in 0..<n {
            switch sqlite3_column_type(stmt, i) {
            case SQLITE_INTEGER: lua_pushinteger(L, sqlite3_column_int64(stmt, i))
            case SQLITE_FLOAT: lua_pushnumber(L, sqlite3_column_double(stmt, i))
            case SQLITE_TEXT, SQLITE_BLOB:
                let p = sqlite3_column_blob(stmt, i)
                let len = Int(sqlite3_column_bytes(stmt, i))
                _ = lua_pushlstring(L, p?.assumingMemoryBound(to: CChar.self), len)
            default: continue
            }
            guard let name = columnName(stmt, i) else {
                sl_pop(L, 2)
                Lua.pushError(L, "SQLite could not name column \(i + 1) of the result (out of memory)")
                return false
            }
            _ = lua_pushstring(L, name)
            lua_rotate(L, -2, 1)
            lua_rawset(L, -3)
        }
        return true
    }

    /// Pushes SQLite's message for `rc` with the SQL it came from, at the caller's line.
    static func pushSQLError(_ L: LuaState, _ db: Database, _ rc: Int32, sqlIndex: Int32 = 0, sql: String? = nil) {
        let text = sql ?? (sqlIndex != 0 ? Lua.string(L, sqlIndex) : nil)
        let context = text.map { " (in \"\($0)\")" } ?? ""
        Lua.pushError(L, db.errorMessage(rc) + context)
    }
}
