import Foundation
import Testing
@testable import ScopeLua

/// The sql module against real SQLite files.
@Suite(.timeLimit(testTimeLimit)) struct SQLTests {
    @Test func bindingRoundTripsValues() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local db <close> = assert(sql.open("\(dir)/v.db"))
            db:exec("CREATE TABLE t(i INTEGER, f REAL, s TEXT, b BLOB, n)")
            db:exec("INSERT INTO t VALUES (?, ?, ?, ?, ?)", math.maxinteger, 0.5, "it's \\"quoted\\"; DROP TABLE t; --", sql.blob("\\0\\1\\255"), nil)
            db:exec("INSERT INTO t VALUES (?, ?, ?, ?, ?)", math.mininteger, -1e300, "", sql.blob(""), true)
            local rows = {}
            for r in db:rows("SELECT * FROM t ORDER BY i DESC") do rows[#rows+1] = r end
            local a, b = rows[1], rows[2]
            return a.i == math.maxinteger, math.type(a.i), a.f, a.s, a.b == "\\0\\1\\255", a.n == nil,
              b.i == math.mininteger, b.f, b.s, b.b, b.n, db:first("SELECT count(*) AS c FROM t").c
            """)
        #expect(run.error == nil)
        #expect(run.values == [.boolean(true), .string("integer"), .number(0.5), .string("it's \"quoted\"; DROP TABLE t; --"),
                               .boolean(true), .boolean(true), .boolean(true), .number(-1e300), .string(""), .string(""),
                               .integer(1), .integer(2)])
    }

    @Test func execReturnsChangedRowsAndRunsSeveralStatements() {
        let run = runLua("""
            local db <close> = sql.open(":memory:")
            local created = db:exec("CREATE TABLE t(x); CREATE TABLE u(y); INSERT INTO t VALUES (?), (?)", 1, 2)
            return created, db:exec("UPDATE t SET x = x + 1"), db:exec("DELETE FROM t WHERE x = ?", 3), db:first("SELECT 1 AS one WHERE 0")
            """)
        #expect(run.values == [.integer(2), .integer(2), .integer(1), .nil])
    }

    @Test func rowsStatementIsFinalizedAfterFullIterationBreakAndError() {
        let run = runLua("""
            local db <close> = sql.open(":memory:")
            db:exec("CREATE TABLE a(x); INSERT INTO a VALUES (1), (2), (3); CREATE TABLE b(y); CREATE TABLE c(z); CREATE TABLE d(w)")
            local s1, s2, s3
            for r in db:rows("SELECT x FROM a") do s1 = scope.current():resources()[2] end
            local full = db:exec("DROP TABLE b")
            for r in db:rows("SELECT x FROM a") do break end
            local afterBreak = db:exec("DROP TABLE c")
            local ok, e = pcall(function()
              for r in db:rows("SELECT x FROM a") do error("in the loop", 0) end
            end)
            local afterError = db:exec("DROP TABLE d")
            return full, afterBreak, ok, e, #scope.current():resources()
            """)
        #expect(run.values == [.integer(0), .integer(0), .boolean(false), .string("in the loop"), .integer(1)])
    }

    @Test func activeStatementBlocksDropTable() {
        let run = runLua("""
            local db <close> = sql.open(":memory:")
            db:exec("CREATE TABLE a(x); INSERT INTO a VALUES (1), (2); CREATE TABLE b(y)")
            for r in db:rows("SELECT x FROM a") do
              return pcall(db.exec, db, "DROP TABLE b")
            end
            """)
        #expect(run.values == [.boolean(false), .string("database table is locked (in \"DROP TABLE b\")")])
    }

    /// Lua 5.4.4 skips the loop's closing value on a `break` when the body captures the
    /// loop variable; in an abandoned coroutine it is never closed. The scope finalizes
    /// the statement, which SQLite shows by accepting DROP TABLE again.
    @Test func luaSkippedCloseIsFinalizedByTheEnclosingScope() {
        let run = runLua("""
            local db <close> = sql.open(":memory:")
            db:exec("CREATE TABLE a(x); INSERT INTO a VALUES (1), (2); CREATE TABLE b(y)")
            local inside
            scope(function()
              local co = coroutine.wrap(function()
                for row in db:rows("SELECT x FROM a") do
                  local capture = function() return row end
                  break
                end
                local yield = coroutine.yield
                yield()
              end)
              co()
              inside = pcall(db.exec, db, "DROP TABLE b")
            end)
            return inside, pcall(db.exec, db, "DROP TABLE b")
            """)
        #expect(run.values == [.boolean(false), .boolean(true), .integer(0)])
    }

    @Test func transactionCommitsOnNormalExitAndRollsBackOnError() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local db <close> = sql.open("\(dir)/tx.db")
            db:exec("CREATE TABLE t(x)")
            do
              local tx <close> = db:transaction()
              db:exec("INSERT INTO t VALUES (1)")
            end
            local ok = pcall(function()
              local tx <close> = db:transaction()
              db:exec("INSERT INTO t VALUES (2)")
              error("abort")
            end)
            with_resource(db:transaction(), function(tx) db:exec("INSERT INTO t VALUES (3)") end)
            pcall(with_resource, db:transaction(), function(tx) db:exec("INSERT INTO t VALUES (4)"); error("x") end)
            local tx = db:transaction()
            db:exec("INSERT INTO t VALUES (5)")
            local committed = tx:commit()
            local tx2 = db:transaction()
            db:exec("INSERT INTO t VALUES (6)")
            tx2:rollback()
            local list = {}
            for r in db:rows("SELECT x FROM t ORDER BY x") do list[#list+1] = r.x end
            return table.concat(list, ","), committed, tx:is_open(), tx2:is_open()
            """)
        #expect(run.error == nil)
        #expect(run.values == [.string("1,3,5"), .boolean(true), .boolean(false), .boolean(false)])
    }

    @Test func nestedTransactionsAreSavepoints() {
        let run = runLua("""
            local db <close> = sql.open(":memory:")
            db:exec("CREATE TABLE t(x)")
            do
              local outer <close> = db:transaction()
              db:exec("INSERT INTO t VALUES ('outer')")
              pcall(function()
                local inner <close> = db:transaction()
                db:exec("INSERT INTO t VALUES ('inner failed')")
                error("inner")
              end)
              do
                local inner <close> = db:transaction()
                db:exec("INSERT INTO t VALUES ('inner ok')")
              end
            end
            local list = {}
            for r in db:rows("SELECT x FROM t ORDER BY rowid") do list[#list+1] = r.x end
            return table.concat(list, ",")
            """)
        #expect(run.text == "outer,inner ok")
    }

    @Test func releasingTheConnectionReleasesItsChildrenFirst() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local db = sql.open("\(dir)/c.db")
            db:exec("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            local stmt = db:prepare("SELECT x FROM t")
            local tx = db:transaction()
            db:exec("INSERT INTO t VALUES (2)")
            db:release()
            local check = sql.open("\(dir)/c.db")
            local n = check:first("SELECT count(*) AS n FROM t").n
            check:release()
            local ok, e = pcall(stmt.exec, stmt)
            return stmt:is_open(), tx:is_open(), n, e
            """, trace: true)
        #expect(run.values == [.boolean(false), .boolean(false), .integer(1),
                               .string("statement#2 \"SELECT x FROM t\" used after release (released with sqlite#1)")])
        let releases = run.diagnostics.filter { $0.contains("release") && !$0.contains("#4") && !$0.contains("#5") }
        #expect(releases == [
            "scopelua: trace: release sqlite#1 \"\(dir)/c.db\" at test:6",
            "scopelua: trace: release transaction#3 \"transaction\" with sqlite#1 \"\(dir)/c.db\"",
            "scopelua: trace: release statement#2 \"SELECT x FROM t\" with sqlite#1 \"\(dir)/c.db\"",
        ])
    }

    @Test func preparedStatementsAreReusable() {
        let run = runLua("""
            local db <close> = sql.open(":memory:")
            db:exec("CREATE TABLE t(k, v)")
            local ins <close> = db:prepare("INSERT INTO t VALUES (?, ?)")
            for i = 1, 10 do ins:exec("k" .. i, i) end
            local q = db:prepare("SELECT v FROM t WHERE v > ? ORDER BY v")
            local seen = {}
            for r in q:rows(7) do seen[#seen+1] = r.v end
            for r in q:rows(0) do break end
            local dropped = pcall(db.exec, db, "CREATE TABLE u(x)")
            return table.concat(seen, ","), q:first(9).v, ins.kind, dropped
            """)
        #expect(run.values == [.string("8,9,10"), .integer(10), .string("statement"), .boolean(true)])
    }

    @Test func clearErrors() {
        let dir = temporaryDirectory()
        #expect(runLua("local db = sql.open(':memory:'); db:exec('SELEC 1')").error?.message
            == "test:1: near \"SELEC\": syntax error (in \"SELEC 1\")")
        #expect(runLua("local db = sql.open(':memory:'); db:exec('SELECT * FROM nope')").error?.message
            == "test:1: no such table: nope (in \"SELECT * FROM nope\")")
        #expect(runLua("return sql.open('\(dir)/no/such/dir/x.db')").values
            == [.nil, .string("cannot open database \"\(dir)/no/such/dir/x.db\": unable to open database file")])
        #expect(runLua("local db = sql.open(':memory:'); db:exec('SELECT ?, ?', 1, print)").error?.message
            == "test:1: SQL parameter 2: cannot bind a function (use nil, a boolean, a number, a string or sql.blob(s))")
        #expect(runLua("local db = sql.open(':memory:'); db:exec('SELECT ?', 1, 2)").error?.message
            == "test:1: SQL expects 1 parameter, got 2")
        #expect(runLua("local db = sql.open(':memory:'); db:release(); db:exec('SELECT 1')").error?.message
            == "test:1: sqlite#1 \":memory:\" used after release (released at test:1)")
        #expect(runLua("local db = sql.open(':memory:'); local tx = db:transaction(); tx:commit(); tx:commit()").error?.message
            == "test:1: transaction#2 \"transaction\" used after release (released at test:1)")
        #expect(runLua("sql.open(':memory:', {busy_timeout = -1})").error?.message
            == "test:1: bad argument #2 to 'open' (busy_timeout must be an integer between 0 and 2147483647 (milliseconds))")
    }

    @Test func busyAfterTheTimeoutSaysSo() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local a <close> = sql.open("\(dir)/busy.db")
            a:exec("CREATE TABLE t(x)")
            local b <close> = sql.open("\(dir)/busy.db", {busy_timeout = 50})
            local tx <close> = a:transaction()
            a:exec("INSERT INTO t VALUES (1)")
            local ok, e = pcall(b.exec, b, "INSERT INTO t VALUES (2)")
            return e
            """)
        #expect(run.text == "database is locked (still busy after the 50 ms busy_timeout) (in \"INSERT INTO t VALUES (2)\")")
    }

    @Test func crashInsideATransactionLeavesNoPartialRows() throws {
        let dir = temporaryDirectory()
        write("""
            local db = sql.open("crash.db")
            db:exec("CREATE TABLE IF NOT EXISTS t(x)")
            db:exec("INSERT INTO t VALUES ('before')")
            local tx = db:transaction()
            for i = 1, 100 do db:exec("INSERT INTO t VALUES (?)", i) end
            error("crash in the middle of the transaction")
            """, to: "crash.lua", in: dir)
        let r = try scopelua(["run", "crash.lua"], directory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("scopelua: crash.lua:6: crash in the middle of the transaction"))
        let check = runLua("""
            local db <close> = sql.open("\(dir)/crash.db")
            return db:first("SELECT count(*) AS n, group_concat(x) AS xs FROM t").n, db:first("SELECT group_concat(x) AS xs FROM t").xs
            """)
        #expect(check.values == [.integer(1), .string("before")])
    }

    @Test func readonlyRefusesWrites() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local w = sql.open("\(dir)/ro.db"); w:exec("CREATE TABLE t(x)"); w:release()
            local r <close> = sql.open("\(dir)/ro.db", {readonly = true})
            return pcall(r.exec, r, "INSERT INTO t VALUES (1)")
            """)
        #expect(run.values == [.boolean(false), .string("attempt to write a readonly database (in \"INSERT INTO t VALUES (1)\")")])
    }
}
