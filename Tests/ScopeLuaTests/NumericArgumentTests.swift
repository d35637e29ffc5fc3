import CLua
import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaResources

/// Numbers a script passes that no Swift conversion can hold (issue 9, item 3): each
/// is a Lua error naming the argument and the allowed range, never a trap (which ended
/// the whole process with status 132, nothing released).
@Suite(.timeLimit(testTimeLimit)) struct NumericArgumentTests {
    /// In a child process: before, the first case trapped and ended it.
    @Test func timerDelaysAndIntervalsOutOfRangeAreLuaErrors() throws {
        let dir = temporaryDirectory()
        write("""
            local f = function() end
            local cases = {
              { "after", 1e300 }, { "after", math.huge }, { "after", -math.huge }, { "after", 0/0 },
              { "after", -1 }, { "after", 1e9 + 1 }, { "after", math.maxinteger }, { "after", math.mininteger },
              { "every", 1e300 }, { "every", math.huge }, { "every", 0/0 }, { "every", 0 }, { "every", -1e-9 },
              { "every", 2^63 }, { "every", 1e9 * 2 },
            }
            for _, c in ipairs(cases) do
              local ok, err = pcall(function()
                if c[1] == "after" then timer.after(c[2], f) else timer.every(c[2], f) end
              end)
              print(c[1], ok, err)
            end
            local a <close> = timer.after(1e9, f)
            local e <close> = timer.every(1e9, f)
            local z <close> = timer.after(0, f)
            local t <close> = timer.every(1e-9, f)
            print(a.label, e.label, z.label, t.label)
            """, to: "timers.lua", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "timers.lua"], directory: dir)
        #expect(r.status == 0)
        let after = "bad argument #1 to 'after' (delay must be between 0 and 1e9 seconds)"
        let every = "bad argument #1 to 'every' (interval must be more than 0 and at most 1e9 seconds)"
        let expected = (Array(repeating: "after\tfalse\ttimers.lua:10: \(after)", count: 8)
            + Array(repeating: "every\tfalse\ttimers.lua:10: \(every)", count: 7)
            + ["after 1000000000s\tevery 1000000000s\tafter 0s\tevery 1e-09s"])
        #expect(r.stdout.split(separator: "\n").map(String.init) == expected)
    }

    /// busy_timeout is an int for SQLite: a larger value was clamped silently.
    @Test func busyTimeoutOutOfRangeIsALuaError() {
        let run = runLua("""
            local out = {}
            for _, ms in ipairs({ 1 << 40, 2147483648, -1, 1.5, 1e300 }) do
              local ok, err = pcall(function() sql.open(":memory:", { busy_timeout = ms }) end)
              out[#out + 1] = tostring(ok) .. " " .. err
            end
            local db <close> = assert(sql.open(":memory:", { busy_timeout = 2147483647 }))
            return table.concat(out, "\\n")
            """)
        #expect(run.error == nil)
        let message = "false test:3: bad argument #2 to 'open' (busy_timeout must be an integer between 0 and 2147483647 (milliseconds))"
        #expect(run.text == Array(repeating: message, count: 5).joined(separator: "\n"))
    }

    /// SQL text longer than the `int` SQLite's prepare takes. A real one needs 2 GiB
    /// (and twice that to build), so the check is called with such a length directly.
    @Test func sqlTextLongerThanAnIntIsAnError() {
        let rt = Runtime(options: RuntimeOptions())
        defer { rt.close() }
        let L = rt.L
        let top = lua_gettop(L)
        #expect(SQLBindings.sqlLength(L, Int(Int32.max)) == Int32.max)
        #expect(lua_gettop(L) == top)
        #expect(SQLBindings.sqlLength(L, Int(Int32.max) + 1) == nil)
        #expect(Lua.string(L, -1) == "SQL text too long (2147483648 bytes; at most 2147483647)")
        lua_settop(L, top)
    }
}
