import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Events through the stages: calling `process`, error policies and retries, what a
/// stage emits.
extension PipelineRun {
    // MARK: - Events

    /// Takes the event on top of the stack through stages `i`... (pops it). Returns
    /// false when the run must stop: the event is then in no category yet (in flight;
    /// the caller counts it).
    func deliver(_ L: LuaState, _ i: Int, extra: Bool) -> Bool {
        let event = lua_gettop(L)
        defer { lua_settop(L, event - 1) }
        if i == stages.count {
            return writeOutput(L, event, extra: extra)
        }
        Lua.reserve(L, 16, for: "a stage call")
        let stage = stages[i]
        var policy = stage.policy
        var attempt = 0
        let queueBase = queueTop
        while true {
            rt.current = stage.task
            runningStage = i
            lua_rawgeti(L, Lua.registry, lua_Integer(stage.definition.process))
            lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
            lua_pushvalue(L, event)
            let call = limitedCall(L, stage, .process, nargs: 2, nresults: 1)
            stage.time.record(call.elapsed)
            stage.calls += 1
            runningStage = nil
            var status = call.code
            var breachTraceback: String?
            if call.breach != 0 {
                // Whatever the script did with the breach, the event failed with it.
                let event = describeEvent(L, event, extra: extra)
                (status, breachTraceback) = pushBreach(L, stage, call, .process, results: 1,
                                                       where: "on \(event.hasPrefix("line") ? "event " : "")\(event)")
            }
            let result = lua_gettop(L)  // the result, or the error object
            let (failures, traceback) = endStageCall(L, stage, status: status, result: result, traceback: breachTraceback)
            // What process returned: the event table, nil (filtered) or anything else,
            // which is an error of the event (a type check only on the hot path).
            var returnedOther = false
            if status == LUA_OK, failures == 0 {
                let type = lua_type(L, result)
                if type == LUA_TTABLE || type == LUA_TNIL {
                    // The event (if any) and what the stage emitted go downstream.
                    if !deliverEmitted(L, after: i, from: queueBase) { return false }
                    if type == LUA_TNIL {
                        if extra { fanout.filtered += 1 } else { original.filtered += 1 }
                        return true
                    }
                    lua_pushvalue(L, result)
                    return deliver(L, i + 1, extra: extra)
                }
                returnedOther = true
            }
            if returnedOther {
                // `return e.kind == "buy"` and the like: written out, it would be `true`.
                Lua.push(L, "stage '\(stage.definition.name)' returned a \(Lua.typeName(L, result)) (expected the event table or nil)")
            } else {
                // The call (or a release in its task scope) failed.
                _ = rt.mergeErrors(L, primary: status == LUA_OK ? 0 : result, failures: failures)
            }
            if status == LUA_ERRMEM, case .channel(let link) = options.input {
                // A worker whose state ran out of memory is replaced (Workers/): the
                // event's policy applies with the crash as its error (no retry in it).
                let why = "worker \(link.number) crashed: \(Self.firstLine(Lua.describe(L, -1)))\(memoryLimitNote) in stage '\(stage.definition.name)'; its state is replaced by a fresh one"
                crashed = why
                sl_pop(L, 1)
                Lua.push(L, why)
                if case .retry(_, _, let then) = policy { policy = then }
            }
            let error = lua_gettop(L)
            stage.errors += 1
            if stage.notices.first == nil {
                stage.notices.first = "on \(describeEvent(L, event, extra: extra)): \(Self.firstLine(Lua.describe(L, error)))"
            }
            dropEmitted(L, from: queueBase)
            if sl_stop_forced() != 0 {
                forcedStage = stage.definition.name
                return false
            }
            if case .retry(let times, let backoff, let then) = policy {
                // A stage that returned the wrong kind of value would return it again:
                // its `then` applies at once.
                if attempt < times, !returnedOther, crashed == nil {
                    // A stop does not wait out a backoff (it could outlast the grace
                    // period): the retry does not happen, the event stays in flight and
                    // the run stops.
                    if backoff > 0 {
                        switch self.backoff(L, backoff * Double(1 << min(attempt, 20)), stage) {
                        case .waited: break
                        case .stopped:
                            rt.diagnose("scopelua: stopped while stage '\(stage.definition.name)' waited to retry \(describeEvent(L, event, extra: extra)): it was not finished (in flight)")
                            return false
                        case .failed:
                            return false
                        }
                    }
                    attempt += 1
                    retried += 1
                    stage.retried += 1
                    lua_settop(L, event)
                    continue
                }
                policy = then
            }
            switch policy {
            case .skip:
                if extra { fanout.skipped += 1 } else { original.skipped += 1 }
                stage.skipped += 1
                notice(L, stage, event: event, extra: extra, error: Lua.describe(L, error), outcome: "skipped")
                return true
            case .deadLetter:
                guard writeDeadLetter(L, event: event, stage: stage.definition.name, error: error, extra: extra, traceback: traceback) else { return false }
                if extra { fanout.deadLettered += 1 } else { original.deadLettered += 1 }
                stage.deadLettered += 1
                notice(L, stage, event: event, extra: extra, error: Lua.describe(L, error), outcome: "dead-lettered")
                return true
            case .abort, .retry:
                abortMessage = "pipeline '\(definition.name)' aborted: stage '\(stage.definition.name)' failed on \(describeEvent(L, event, extra: extra)): \(describeError(L, error, traceback: traceback))"
                return false
            }
        }
    }

    /// ` (the state's --memory-limit, 64 MiB)` when the state has a limit.
    var memoryLimitNote: String {
        let limit = rt.info.pointee.memlimit
        return limit > 0 ? " (the state's --memory-limit, \(Report.bytes(Int(clamping: limit))))" : ""
    }

    /// After a call of `stage`'s process or flush in its task scope: the traceback of a
    /// failure at `result` (taken before the releases run Lua code that may fail too), and
    /// the failures of releasing what the call acquired (pushed on the stack); the stage's
    /// own scope is current again.
    @inline(__always)
    func endStageCall(_ L: LuaState, _ stage: StageRun, status: Int32, result: Int32,
                      traceback given: String? = nil) -> (failures: Int32, traceback: String?) {
        let traceback = status == LUA_OK ? nil : given ?? rt.takeTraceback(L, result)
        var failures: Int32 = 0
        if stage.task.openCount > 0 {
            failures = rt.endScope(stage.task, L, error: status == LUA_OK ? 0 : result)
        }
        stage.task.reopen()
        rt.current = stage.scope
        return (failures, traceback)
    }

    /// Delivers the events the call of stage `i` emitted (queue entries above `base`)
    /// to the stages after it, and empties them from the queue. When one of them stops
    /// the run, it and those not delivered yet are in flight.
    func deliverEmitted(_ L: LuaState, after i: Int, from base: lua_Integer) -> Bool {
        let count = queueTop - base
        guard count > 0 else { return true }
        lua_rawgeti(L, Lua.registry, lua_Integer(queue))
        let q = lua_gettop(L)
        defer { lua_settop(L, q - 1) }
        for k in 1...count {
            lua_rawgeti(L, q, base + k)
            if !deliver(L, i + 1, extra: true) {
                fanout.inFlight += Int(count - k + 1)
                dropEmitted(L, from: base, uncount: false)
                return false
            }
        }
        dropEmitted(L, from: base, uncount: false)
        return true
    }

    /// Empties the emit queue above `base`. Events emitted by a call that then failed
    /// are discarded (`uncount`): they never existed.
    func dropEmitted(_ L: LuaState, from base: lua_Integer, uncount: Bool = true) {
        guard queueTop > base else { return }
        lua_rawgeti(L, Lua.registry, lua_Integer(queue))
        for k in (base + 1)...queueTop {
            lua_pushnil(L)
            lua_rawseti(L, -2, k)
        }
        sl_pop(L, 1)
        if uncount { fanoutCreated -= Int(queueTop - base) }
        queueTop = base
    }

    /// ctx:emit(e): queue an extra event after the running stage. Nil, or a problem.
    func emit(_ L: LuaState, ctx: Int32, event: Int32) -> String? {
        guard let i = runningStage else { return "ctx:emit can only be used in process or a timer of a running stage" }
        guard !opening else {
            return "ctx:emit cannot be used in open (stage '\(stages[i].definition.name)'): no event is flowing yet; emit from process or from a timer"
        }
        guard isContext(L, ctx, of: stages[i]) else {
            return "ctx:emit: this ctx is not the one of stage '\(stages[i].definition.name)', which is running"
        }
        lua_rawgeti(L, Lua.registry, lua_Integer(queue))
        lua_pushvalue(L, event)
        queueTop += 1
        lua_rawseti(L, -2, queueTop)
        sl_pop(L, 1)
        fanoutCreated += 1
        return nil
    }

    /// ctx:own(h): the handle moves from the task scope to the stage scope.
    func own(_ L: LuaState, ctx: Int32, handle h: Handle) -> String? {
        guard let i = runningStage else { return "ctx:own can only be used in process of a running stage" }
        let stage = stages[i]
        guard isContext(L, ctx, of: stage) else {
            return "ctx:own: this ctx is not the one of stage '\(stage.definition.name)', which is running"
        }
        let owner = h.pointee.owningScope
        if owner === stage.scope { return nil }
        guard owner === stage.task else {
            return "ctx:own: \(rt.describe(h)) belongs to \(owner?.path ?? "no scope"), not to this event's task scope"
        }
        sl_registry_remove(h)
        stage.scope.add(h)
        return nil
    }

    func isContext(_ L: LuaState, _ idx: Int32, of stage: StageRun) -> Bool {
        lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
        defer { sl_pop(L, 1) }
        return lua_rawequal(L, idx, -1) != 0
    }
}
