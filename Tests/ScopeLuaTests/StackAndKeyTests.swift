import CLua
import CSQLite
import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaResources

/// Lua C API calls that raise or overrun when Swift ignores their preconditions (issue
/// 9, item 10): a nil table key, a stack that cannot grow.
@Suite(.timeLimit(testTimeLimit)) struct StackAndKeyTests {
    /// SQLite returns NULL for a column name when it is out of memory. That name used
    /// to become a nil key, and lua_rawset raised through Swift frames; now the row
    /// is an error that names the column.
    @Test func unnamedColumnIsAnErrorNotANilKey() throws {
        let rt = Runtime(options: RuntimeOptions())
        defer { rt.close() }
        _ = try rt.execute("db = sql.open(':memory:'); stmt = db:prepare('SELECT 1 AS a, 2 AS b')", name: "=test")
        let L = rt.L
        let top = lua_gettop(L)
        Bindings.getGlobal(L, "stmt")
        let stmt = try #require((rt.handle(at: -1, L, kind: .statement)?.pointee.resource as? Statement)?.stmt)
        #expect(sqlite3_step(stmt) == SQLITE_ROW)
        let named = SQLBindings.pushRow(stmt, L) { s, i in i == 0 ? sqlite3_column_name(s, i) : nil }
        #expect(!named)
        #expect(Lua.string(L, -1) == "SQLite could not name column 2 of the result (out of memory)")
        #expect(lua_gettop(L) == top + 2)  // the statement, the error
        #expect(SQLBindings.pushRow(stmt, L))
        lua_getfield(L, -1, "b")
        #expect(lua_tointegerx(L, -1, nil) == 2)
        sqlite3_reset(stmt)
        lua_settop(L, top)
    }

    /// with_resource copies its arguments for the call: with more handles than the
    /// stack can hold twice, the copies used to run past the end of the stack's memory
    /// (a segmentation fault); now it is a Lua error and the handles stay usable. In a
    /// child process, as the old behaviour was a crash.
    @Test func withResourcePastTheStackLimitIsAnError() throws {
        let dir = temporaryDirectory()
        let script = write("""
            local hs = {}
            for i = 1, 600000 do hs[i] = timer.measure("h") end
            hs[#hs + 1] = function(...) return select("#", ...) end
            print(pcall(with_resource, table.unpack(hs)))
            hs[#hs] = nil
            print(with_resource(hs[1], hs[2], function(a, b) return a:is_open() and b:is_open() end))
            """, to: "many.lua", in: dir)
        let r = try runProcess(scopeluaPath, ["run", script])
        #expect(r.status == 0)
        #expect(r.stdout == "false\tstack overflow (too many arguments to with_resource)\ntrue\n")
    }
}
