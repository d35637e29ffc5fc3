import Foundation
import Testing
@testable import ScopeLua

/// Values bound to a statement that is still stepping after the call returned (issue 9,
/// items 2 and 10): the statement must own them, whatever the loop body collects.
@Suite(.timeLimit(testTimeLimit)) struct SQLLifetimeTests {
    /// A long string and a blob, made fresh for the call (nothing else refers to them),
    /// compared on every row of a rows loop whose body collects garbage several times
    /// and then allocates strings of the same size (so freed memory is reused at once).
    @Test(arguments: ["db", "stmt"])
    func rowsParametersSurviveCollectionInTheLoopBody(form: String) {
        let source = """
            local db <close> = sql.open(":memory:")
            db:exec("CREATE TABLE t(n INTEGER)")
            for i = 1, 5 do db:exec("INSERT INTO t VALUES (?)", i) end
            local function fresh(c) return string.rep(c, 5000) .. "!" end
            local expected = fresh("s")
            local stmt <close> = db:prepare("SELECT n, ? AS s, ? AS b FROM t WHERE ? = ?")
            local function loop()
              if "\(form)" == "db" then
                return db:rows("SELECT n, ? AS s, ? AS b FROM t WHERE ? = ?",
                  fresh("s"), sql.blob(fresh("s")), fresh("s"), fresh("s"))
              end
              return stmt:rows(fresh("s"), sql.blob(fresh("s")), fresh("s"), fresh("s"))
            end
            local good, seen = 0, 0
            for row in loop() do
              seen = seen + 1
              for _ = 1, 3 do collectgarbage() end
              local junk = {}
              for j = 1, 64 do junk[j] = fresh(string.char(96 + j % 26)) end
              if row.s == expected and row.b == expected then good = good + 1 end
            end
            return seen, good
            """
        let result = runLua(source)
        #expect(result.error == nil)
        #expect(result.values == [.integer(5), .integer(5)])
    }
}
