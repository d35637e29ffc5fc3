import Testing
import CLua
@testable import ScopeLua
@testable import ScopeLuaCore

/// A module defined outside the core: a global, per-runtime state, and a hook that runs
/// before the runtime releases what is still open.
private enum ProbeModule: RuntimeModule {
    final class State {
        var installs = 0
        var closes: [Int] = []  // open handles in the root scope when the hook ran
    }

    static func install(_ rt: Runtime, _ L: LuaState) {
        rt.state(State.self) { State() }.installs += 1
        lua_pushinteger(L, 42)
        Bindings.setGlobal(L, "probe")
    }

    static func willClose(_ rt: Runtime) {
        rt.state(State.self) { State() }.closes.append(rt.root.openCount)
    }
}

/// The core's module mechanism (docs/ARCHITECTURE.md, "Layers"): a runtime installs the
/// core's bindings and the modules it is given; `Runtime(options:)` gives the standard ones.
@Suite(.timeLimit(testTimeLimit)) struct ModuleTests {
    @Test func aCoreRuntimeHasScopesButNoModules() throws {
        let rt = Runtime(options: RuntimeOptions(), modules: [])
        defer { rt.close() }
        let values = try rt.execute("""
            local seen = {}
            scope(function() defer(function() seen[#seen + 1] = "deferred" end) end)
            return table.concat(seen), type(fs), type(timer), type(sql), type(json), type(pipeline), type(log)
            """)
        #expect(values == [.string("deferred"), .string("nil"), .string("nil"), .string("nil"),
                           .string("nil"), .string("nil"), .string("table")])
    }

    @Test func theStandardRuntimeInstallsEveryModule() throws {
        let rt = Runtime()
        defer { rt.close() }
        #expect(rt.modules.count == Runtime.standardModules.count)
        let values = try rt.execute("return type(fs), type(timer), type(sql), type(json), type(pipeline), type(stage)")
        #expect(values == ["table", "table", "table", "table", "function", "function"].map(LuaValue.string))
    }

    @Test func aModuleKeepsItsStateAndIsToldBeforeTheRuntimeCloses() throws {
        let rt = Runtime(options: RuntimeOptions(), modules: [ProbeModule.self])
        let state = rt.state(ProbeModule.State.self) { ProbeModule.State() }
        #expect(state.installs == 1)
        #expect(try rt.execute("defer(function() end); return probe") == [.integer(42)])
        rt.close()
        rt.close()  // idempotent: the hook runs once
        #expect(state.closes == [1])  // before the root scope released the defer
    }
}
