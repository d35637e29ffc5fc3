import CLua
import CScopeLua

/// `os.exit([code [, close]])`: leaves at once, as in stock Lua (nothing can catch it),
/// but first releases everything the script acquired, from the current scope out to the
/// root: with the error "os.exit(N)" for a failure status (transactions roll back,
/// deferred functions and stage closes get the error), without one for success (they
/// commit and get nil). Then, as stock os.exit does, the state is closed if `close` is
/// true, and the process exits with the status (1 if it was 0 and a release failed).
enum ExitBindings: RuntimeModule {
    static func install(_ rt: Runtime, _ L: LuaState) {
        Bindings.getGlobal(L, "os")
        sl_pushosexit(L, exit)
        Lua.setField(L, -2, "exit")
        sl_pop(L, 1)
    }

    /// `--report`: os.exit prints the run report before leaving, as the end of a run does.
    static func reportAtExit(_ L: LuaState) {
        Bindings.getGlobal(L, "os")
        Lua.rawField(L, -1, "exit")
        if lua_tocfunction(L, -1) != nil {
            lua_pushboolean(L, 1)
            _ = lua_setupvalue(L, -2, 2)
        }
        sl_pop(L, 2)
    }

    /// Called by the C os.exit with the status at index 1; returns the status to exit with.
    static let exit: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        var status = Int32(truncatingIfNeeded: lua_tointegerx(L, 1, nil))
        let report = lua_toboolean(L, sl_upvalueindex(2)) != 0
        var errIndex: Int32 = 0
        if status != 0 {
            Lua.pushError(L, "os.exit(\(status))")
            errIndex = lua_gettop(L)
        }
        let run = rt.activeRun
        let failures = rt.releaseForExit(L, error: errIndex)
        for failure in failures { rt.diagnose("scopelua: release error: \(failure)") }
        if !failures.isEmpty, status == 0 { status = ScriptRunner.scriptError }
        if report {
            if let run, run.options.commandLine { rt.diagnose(Report.pipelineText(run)) }
            rt.diagnose(Report.text(rt))
        }
        return status
    }
}

extension Runtime {
    /// Ends every scope from the current one out to the root, innermost first, passing
    /// the error at `errIndex` (0: none); a pipeline running closes all its stages (their
    /// `close` runs). Returns the release failures, described.
    func releaseForExit(_ L: LuaState, error errIndex: Int32) -> [String] {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        var failures: [String] = []
        func collect(_ n: Int32) {
            let top = lua_gettop(L)
            for i in 0..<n { failures.append(Lua.describe(L, top - n + 1 + i)) }
            lua_settop(L, base)
        }
        var run = activeRun
        var scope: Scope? = current
        while let s = scope {
            if let r = run, r.owns(s) {
                let outside = r.outerScope?.parent
                failures += r.closeForExit(L, error: errIndex)
                lua_settop(L, base)
                run = nil
                scope = outside
                continue
            }
            current = s  // what a release acquires is released with the scope
            collect(endScope(s, L, error: errIndex))
            scope = s.parent
        }
        current = root
        collect(endScope(root, L, error: errIndex))
        return failures
    }
}
