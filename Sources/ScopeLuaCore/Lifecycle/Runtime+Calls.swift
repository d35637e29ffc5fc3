import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Running code in the runtime: loading, protected calls with their tracebacks, and the
/// end of the run (releasing everything, closing the state).
extension Runtime {

    /// Compiles `source` as a chunk named `name` (`=name` shows as is, `@file` as a file).
    public func load(_ source: String, name: String) throws(LuaError) {
        let status = source.withCString { p in name.withCString { sl_loadbuffer(L, p, strlen(p), $0) } }
        if status != LUA_OK {
            let message = Lua.describe(L, -1)
            sl_pop(L, 1)
            throw LuaError(kind: .syntax(incomplete: message.hasSuffix("<eof>")), message: message)
        }
    }

    /// Calls the function below `nargs` arguments on top of the stack in the current
    /// scope, with a traceback taken where an error happens. Leaves the results (any
    /// number) on the stack; on error leaves nothing and throws.
    public func call(nargs: Int32, base: Int32? = nil) throws(LuaError) {
        let fnIndex = lua_gettop(L) - nargs
        lua_pushcclosure(L, sl_capturetraceback, 0)
        lua_rotate(L, fnIndex, 1)
        let status = sl_pcall(L, nargs, LUA_MULTRET, fnIndex)
        sl_remove(L, fnIndex)
        if info.pointee.leakhead < info.pointee.nleaks { releaseLeaks(L) }  // a safe point
        if status != LUA_OK {
            let error = takeError(L)
            throw error
        }
    }

    /// The error object at `idx` as a `LuaError`, leaving the stack as it was.
    package func takeError(copyOf idx: Int32, _ L: LuaState, traceback: String? = nil) -> LuaError {
        lua_pushvalue(L, idx)
        return takeError(L, traceback: traceback)
    }

    /// Pops the error object on top and turns it into a `LuaError` with the traceback
    /// captured for that very object (see `takeTraceback`), or the one given.
    package func takeError(_ L: LuaState, traceback given: String? = nil) -> LuaError {
        let traceback = given ?? takeTraceback(L, -1)  // before __tostring runs Lua code
        var message = Lua.describe(L, -1)
        let t = lua_type(L, -1)
        if t != LUA_TSTRING, t != LUA_TNUMBER {
            // lua.c's wording for error objects that cannot say what they are.
            if luaL_getmetafield(L, -1, "__tostring") == LUA_TNIL {
                message = "(error object is a \(Lua.typeName(L, -1)) value)"
            } else {
                sl_pop(L, 1)
            }
        }
        sl_pop(L, 1)
        return LuaError(kind: .runtime, message: message, traceback: traceback)
    }

    /// The traceback the message handler captured for the error object at `idx` (by
    /// identity), or nil; the runtime forgets it either way. Take it right after the
    /// protected call failed: releases run Lua code that may fail and capture its own.
    package func takeTraceback(_ L: LuaState, _ idx: Int32) -> String? {
        guard sl_taketraceback(L, idx) != 0 else { return nil }
        defer { sl_pop(L, 1) }
        return Lua.string(L, -1)
    }

    /// Runs `source` in the current scope and returns its results, converted.
    @discardableResult
    public func execute(_ source: String, name: String = "=chunk") throws(LuaError) -> [LuaValue] {
        let base = lua_gettop(L)
        try load(source, name: name)
        try call(nargs: 0)
        defer { lua_settop(L, base) }
        return (base + 1 ..< lua_gettop(L) + 1).map { LuaValue(L, $0) }
    }

    /// Ends the root scope (releasing everything still open, newest first) with the
    /// given error message as the error passed to release handlers. Returns the release
    /// failures, described. Idempotent.
    @discardableResult
    public func releaseAll(error: String? = nil) -> [String] {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        var errIndex: Int32 = 0
        if let error {
            Lua.push(L, error)
            errIndex = lua_gettop(L)
        }
        current = root
        let failures = endScope(root, L, error: errIndex)
        let top = lua_gettop(L)
        return (0..<failures).map { Lua.describe(L, top - failures + 1 + $0) }
    }

    /// Lets the modules finish (`RuntimeModule.willClose`), releases everything, reports
    /// failures to the diagnostics sink and closes the Lua state. Idempotent.
    public func close() {
        guard !closed else { return }
        for module in modules { module.willClose(self) }
        for failure in releaseAll() {
            diagnose("scopelua: release error: \(failure)")
        }
        summarizeLeaks()
        closed = true
        sl_closestate(L)
    }
}
