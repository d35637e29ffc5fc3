import Foundation
import Testing
@testable import ScopeLua

/// `shared.dict(name)`: dictionaries of the run's `SharedStore` (`RuntimeOptions.shared`),
/// which every runtime created with a copy of the same options shares — the workers of
/// `--workers N`, each its own Lua state on its own thread (docs/ARCHITECTURE.md,
/// "Shared dictionaries").
@Suite(.timeLimit(testTimeLimit)) struct SharedDictTests {

    // MARK: - One runtime

    @Test func theMethodsReturnExactlyWhatTheySay() {
        let run = runLua("""
            local d = shared.dict("counters")
            local r = {}
            local function put(...) for i = 1, select("#", ...) do r[#r+1] = tostring((select(i, ...))) end end
            put(d:get("absent"))                        -- nil
            put(select("#", d:set("s", "text")))         -- set returns nothing
            put(d:get("s"))                             -- text
            put(d:incr("n"), d:incr("n"), d:incr("n", 5)) -- 1 2 7
            put(d:incr("m", 1, 100), d:incr("m", -1, 100)) -- 101 100 (init only for an absent key)
            put(d:add("once", true), d:add("once", false), d:get("once")) -- true false true
            put(d:delete("once"), d:delete("once"), d:get("once")) -- true false nil
            d:set("s", nil)
            put(d:get("s"), d:count(), table.concat(d:keys(), ","))  -- nil 2 m,n
            return table.concat(r, " ")
            """)
        #expect(run.error == nil)
        #expect(run.text == "nil 0 text 1 2 7 101 100 true false true true false nil nil 2 m,n")
    }

    /// Integers stay integers and floats stay floats, as Lua has them; integer +
    /// integer is an integer, anything with a float a float.
    @Test func integersAndFloatsKeepTheirType() {
        let run = runLua("""
            local d = shared.dict("numbers")
            local r = {}
            local function put(v) r[#r+1] = math.type(v) .. ":" .. tostring(v) end
            d:set("i", 2); d:set("f", 2.0)
            put(d:get("i")); put(d:get("f"))               -- integer:2 float:2.0
            put(d:incr("i")); put(d:incr("f"))             -- integer:3 float:3.0
            put(d:incr("i", 0.5)); put(d:incr("i"))        -- float:3.5 float:4.5
            put(d:incr("j", 1, 0.0)); put(d:incr("k", 1.5)) -- float:1.0 float:1.5
            put(d:incr("big", math.maxinteger - 1))        -- integer:9223372036854775806
            put(d:incr("big"))                             -- integer:9223372036854775807
            put(d:incr("big", 1.0))                        -- float:9.2233720368548e+18
            d:set("b", false)
            r[#r+1] = tostring(d:get("b")) .. ":" .. type(d:get("b"))
            return table.concat(r, " ")
            """)
        #expect(run.error == nil)
        #expect(run.text == "integer:2 float:2.0 integer:3 float:3.0 float:3.5 float:4.5 float:1.0 float:1.5 "
            + "integer:9223372036854775806 integer:9223372036854775807 float:9.2233720368548e+18 false:boolean")
    }

    /// Keys (and names) are strings; a number is its `tostring` (42 is "42", 2.0 is
    /// "2.0"). Strings are bytes: embedded zeros and invalid UTF-8 round-trip.
    @Test func keysAreStringsAndNumbersAreConvertedAsTostringDoes() {
        let run = runLua("""
            local d = shared.dict(7)
            d:set(42, "a"); d:set(2.0, "b")
            local bin = "k\\0\\255"
            d:set(bin, "v\\0\\254")
            return d:get("42"), d:get("2.0"), d:get(2), d.label, shared.dict("7"):get(42),
                   d:get(bin) == "v\\0\\254", d:get("k") == nil
            """)
        #expect(run.error == nil)
        #expect(run.values == [.string("a"), .string("b"), .nil, .string("7"), .string("a"),
                               .boolean(true), .boolean(true)])
    }

    @Test func errorsNameTheDictionaryTheKeyAndWhatIsAllowed() {
        func error(_ source: String) -> String? {
            runLua("local d = shared.dict('c')\n" + source).error?.message
        }
        #expect(error("d:set('k', {})")
                == "test:2: bad argument #2 to 'set' (cannot store a table in shared dictionary \"c\": use a string, a number or a boolean, or nil to delete the key)")
        #expect(error("d:add('k', print)")
                == "test:2: bad argument #2 to 'add' (cannot store a function in shared dictionary \"c\": use a string, a number or a boolean)")
        #expect(error("d:add('k')")
                == "test:2: bad argument #2 to 'add' (cannot store nil in shared dictionary \"c\": use a string, a number or a boolean)")
        #expect(error("d:set('k', d)")
                == "test:2: bad argument #2 to 'set' (cannot store a userdata in shared dictionary \"c\": use a string, a number or a boolean, or nil to delete the key)")
        #expect(error("d:get({})") == "test:2: bad argument #1 to 'get' (string expected, got table)")
        #expect(error("d:delete()") == "test:2: bad argument #1 to 'delete' (string expected, got no value)")
        #expect(error("d:incr('n', '2')") == "test:2: bad argument #2 to 'incr' (number expected, got string)")
        #expect(error("d:incr('n', 1, true)") == "test:2: bad argument #3 to 'incr' (number expected, got boolean)")
        #expect(error("d:set('name', 'x')\nd:incr('name')")
                == "test:3: shared dictionary \"c\": cannot incr key \"name\": it holds a string, not a number (set a number there first, or count under another key)")
        #expect(error("d:set('flag', true)\nd:incr('flag', 1.5)")
                == "test:3: shared dictionary \"c\": cannot incr key \"flag\": it holds a boolean, not a number (set a number there first, or count under another key)")
        #expect(error("d:set('n', math.maxinteger)\nd:incr('n')")
                == "test:3: shared dictionary \"c\": incr of key \"n\" overflows: 9223372036854775807 + 1 does not fit in an integer (increment by a float, e.g. 1.0, to go on in floats)")
        #expect(error("d:incr('low', -1, math.mininteger)")
                == "test:2: shared dictionary \"c\": incr of key \"low\" overflows: -9223372036854775808 + -1 does not fit in an integer (increment by a float, e.g. 1.0, to go on in floats)")
        #expect(error("shared.dict({})") == "test:2: bad argument #1 to 'dict' (string expected, got table)")
        #expect(error("d.get(io.stdout, 'k')") == "test:2: bad argument #1 to 'get' (shared expected, got FILE*)")
        // A failed call changes nothing.
        let run = runLua("""
            local d = shared.dict('c')
            d:set('n', math.maxinteger)
            pcall(d.incr, d, 'n')
            d:set('s', 'x')
            pcall(d.incr, d, 's')
            return d:get('n') == math.maxinteger, d:get('s')
            """)
        #expect(run.values == [.boolean(true), .string("x")])
    }

    /// The handle belongs to the scope current when it was taken, like a file; ending
    /// it (scope end, `:close()`, `<close>`) ends the handle, not the data.
    @Test func theHandleIsAScopedResourceAndTheDataOutlivesIt() {
        let run = runLua("""
            local log = {}
            local d
            scope(function()
              d = shared.dict("hits")
              d:incr("n")
              local r = scope.current():resources()
              log[#log+1] = #r .. " " .. r[1].kind .. " " .. r[1].label .. " " .. r[1].site .. " " .. r[1].scope
              log[#log+1] = d.kind .. " " .. tostring(d)
            end)
            log[#log+1] = tostring(d:is_open()) .. " " .. tostring(d) .. " " .. d.label
            log[#log+1] = select(2, pcall(function() return d:get("n") end))
            local e = shared.dict("hits")
            log[#log+1] = e:incr("n") .. " " .. tostring(e:close()) .. " " .. tostring(e:close())
            do
              local f <close> = shared.dict("hits")
              f:incr("n")
            end
            log[#log+1] = shared.dict("hits"):get("n") .. " " .. #scope.current():resources()
            return table.concat(log, "|")
            """)
        #expect(run.error == nil)
        #expect(run.text == [
            "1 shared hits test:4 run/scope",
            "shared shared#1 \"hits\" (open, run/scope)",
            "false shared#1 \"hits\" (released) hits",
            "test:11: shared#1 \"hits\" used after release (released at the end of scope run/scope)",
            "2 true false",
            "3 1",
        ].joined(separator: "|"))
        #expect(run.countsBeforeClose.acquired == 4)
        #expect(run.countsBeforeClose.releasedByScope == 1)
        #expect(run.countsBeforeClose.releasedByHandle == 2)  // :close() and <close>
        #expect(run.counts.leaked == 0)
    }

    /// Hosts read the store from Swift; the values are Swift values, not Lua's.
    @Test func aHostReadsTheStoreAndAFreshStoreIsEmpty() throws {
        var options = RuntimeOptions()
        let copy = options  // what a worker runtime is created with
        #expect(copy.shared === options.shared)
        let rt = Runtime(options: options)
        _ = try rt.execute("""
            local d = shared.dict("hosts")
            d:set("i", 1); d:set("f", 0.5); d:set("s", "x"); d:set("b", true)
            """)
        rt.close()
        let d = options.shared.dictionary(named: "hosts")
        #expect(d["i"] == .integer(1))
        #expect(d["f"] == .float(0.5))
        #expect(d["s"] == .string(Array("x".utf8)))
        #expect(d["b"] == .boolean(true))
        #expect(d.count == 4)
        #expect(d.keys.map { String(decoding: $0, as: UTF8.self) } == ["b", "f", "i", "s"])

        // Another runtime with the copy sees the data; one with a store of its own does not.
        let again = Runtime(options: copy)
        #expect(try again.execute("return shared.dict('hosts'):get('s')") == [.string("x")])
        again.close()
        options.shared = SharedStore()
        let apart = Runtime(options: options)
        #expect(try apart.execute("return shared.dict('hosts'):count()") == [.integer(0)])
        apart.close()
    }

    // MARK: - Runtimes on threads

    /// 2 × 100 000 increments of one key from two runtimes on two threads: not one lost.
    @Test func twoRuntimesOnTwoThreadsCountExactly() throws {
        let store = SharedStore()
        let results = runOnThreads(2, store: store, """
            local d = shared.dict("totals")
            for i = 1, 100000 do d:incr("events") end
            return d:incr("done")
            """)
        let dones = try results.map { try $0.get() }
        #expect(dones.map { $0.first?.description ?? "?" }.sorted() == ["1", "2"])
        #expect(store.dictionary(named: "totals")["events"] == .integer(200_000))
    }

    /// Both runtimes `add` the same keys at the same time: each key is added once.
    @Test func addFromTwoThreadsSucceedsExactlyOncePerKey() throws {
        let store = SharedStore()
        let results = runOnThreads(2, store: store, """
            local d = shared.dict("seen")
            local first = d:add("first", worker)
            local won = 0
            for i = 1, 20000 do
              if d:add("event:" .. i, worker) then won = won + 1 end
            end
            return first, won
            """)
        let values = try results.map { try $0.get() }
        #expect(values.filter { $0.first == .boolean(true) }.count == 1)
        #expect(values.filter { $0.first == .boolean(false) }.count == 1)
        let won = values.map { value -> Int64 in
            if case .integer(let n) = value.last { return n }
            return -1
        }
        #expect(won.reduce(0, +) == 20_000)
        let seen = store.dictionary(named: "seen")
        #expect(seen.count == 20_001)
        // The winner's value stays: the loser's add changed nothing.
        let firstWinner = values.firstIndex { $0.first == .boolean(true) }.map { Int64($0 + 1) }
        #expect(seen["first"] == firstWinner.map(SharedValue.integer))
    }

    /// One runtime adds integers, the other floats, to one key: the sum is exact and a
    /// float from the first float on; integer keys of the integer-only runtime stay integers.
    @Test func mixedIntegerAndFloatIncrementsFromTwoThreads() throws {
        let store = SharedStore()
        let results = runOnThreads(2, store: store, """
            local d = shared.dict("mixed")
            local by = worker == 1 and 1 or 0.5
            for i = 1, 100000 do d:incr("sum", by) end
            for i = 1, 1000 do d:incr("ints" .. worker) end
            return math.type(d:get("sum")), math.type(d:get("ints" .. worker))
            """)
        let values = try results.map { try $0.get() }
        #expect(values.allSatisfy { $0.last == .string("integer") })
        let d = store.dictionary(named: "mixed")
        #expect(d["sum"] == .float(150_000))
        #expect(d["ints1"] == .integer(1000))
        #expect(d["ints2"] == .integer(1000))
    }
}

/// The results of `runOnThreads`, each written under the lock by its own thread.
private final class ThreadResults: @unchecked Sendable {
    let lock = NSLock()
    var results: [Int: Result<[LuaValue], LuaError>] = [:]
}

/// Runs `source` in `count` runtimes sharing `store`, each created, used and closed on a
/// thread of its own (a runtime is confined to its thread: ARCHITECTURE.md rule 6). The
/// chunk sees `worker` (1...count); all chunks start together, once every runtime
/// exists. Returns each runtime's results in worker order.
private func runOnThreads(_ count: Int, store: SharedStore, _ source: String) -> [Result<[LuaValue], LuaError>] {
    let out = ThreadResults()
    let ready = DispatchSemaphore(value: 0), go = DispatchSemaphore(value: 0), finished = DispatchSemaphore(value: 0)
    for worker in 1...count {
        let thread = Thread {
            var options = RuntimeOptions()
            options.shared = store
            options.diagnostics = { _ in }
            let rt = Runtime(options: options)
            ready.signal()
            go.wait()
            let result: Result<[LuaValue], LuaError>
            do throws(LuaError) {
                result = .success(try rt.execute("local worker = \(worker)\n" + source, name: "=worker\(worker)"))
            } catch {
                result = .failure(error)
            }
            rt.close()
            out.lock.withLock { out.results[worker] = result }
            finished.signal()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }
    for _ in 1...count { ready.wait() }
    for _ in 1...count { go.signal() }
    for _ in 1...count { finished.wait() }
    return out.lock.withLock { (1...count).map { out.results[$0] ?? .failure(LuaError(kind: .runtime, message: "no result")) } }
}
