import CLua
import CScopeLua

/// `defer(fn)`: fn(err) runs when its scope ends, in LIFO order with the resources.
/// Its handle is never shown to the script; the runtime keeps it alive until released.
final class DeferredCall: Resource {
    private var function: Int32
    /// Registry reference that keeps the (hidden) handle alive while registered.
    var anchor: Int32 = LUA_NOREF

    init(function: Int32) {
        self.function = function
        super.init(label: nil)
    }

    override var isHandle: Bool { false }

    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        Lua.reserve(L, 3, for: "a deferred function")
        luaL_unref(L, Lua.registry, anchor)
        lua_rawgeti(L, Lua.registry, lua_Integer(function))
        luaL_unref(L, Lua.registry, function)
        function = LUA_NOREF
        if errIndex != 0 { lua_pushvalue(L, errIndex) } else { lua_pushnil(L) }
        // Release code: a graceful stop waits for it, a forced one bounds it.
        sl_stop_release(L, 1)
        defer { sl_stop_release(L, 0) }
        return sl_pcall(L, 1, 0, 0) == LUA_OK
    }
}
