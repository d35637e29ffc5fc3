import CLua
import CScopeLua

extension ResourceKind {
    static let `defer` = ResourceKind(name: "defer", index: 2)
}

/// `defer(fn)`: fn(err) runs when its scope ends, in LIFO order with the resources.
final class DeferredCall: Resource {
    private var function: Int32

    init(id: Int, site: Site, function: Int32) {
        self.function = function
        super.init(id: id, kind: .defer, label: nil, site: site)
    }

    override var isHandle: Bool { false }

    override func close(_ runtime: Runtime, _ L: LuaState, error errIndex: Int32) -> Bool {
        lua_rawgeti(L, Lua.registry, lua_Integer(function))
        luaL_unref(L, Lua.registry, function)
        function = LUA_NOREF
        if errIndex != 0 { lua_pushvalue(L, errIndex) } else { lua_pushnil(L) }
        return sl_pcall(L, 1, 0, 0) == LUA_OK
    }
}
