import CLua
import CScopeLua

/// The `log` module: `log.info(...)`, `log.warn(...)`, `log.error(...)` write one line
/// to stderr, never into the event stream (a pipeline's output may be stdout). Inside a
/// stage the line names the stage and the input line of the event being processed:
/// `warn: enrich (line 1742): price missing`.
enum LogBindings {
    static func install(_ rt: Runtime, _ L: LuaState) {
        lua_createtable(L, 0, 3)
        Lua.setFunction(L, -1, "info", info)
        Lua.setFunction(L, -1, "warn", warn)
        Lua.setFunction(L, -1, "error", error)
        Bindings.publishModule(L, "log")
    }

    static let info: SwiftLuaFunction = { L in write(L, level: "info") }
    static let warn: SwiftLuaFunction = { L in write(L, level: "warn") }
    static let error: SwiftLuaFunction = { L in write(L, level: "error") }

    /// Joins the arguments with tabs, as print does (tostring, __tostring and __name
    /// included), and writes the line.
    static func write(_ L: LuaState?, level: String) -> Int32 {
        let (rt, L) = Runtime.from(L)
        let n = lua_gettop(L)
        var parts: [String] = []
        parts.reserveCapacity(Int(n))
        for i in stride(from: 1, through: n, by: 1) {
            lua_pushcclosure(L, sl_tostring, 0)
            lua_pushvalue(L, i)
            guard sl_pcall(L, 1, 1, 0) == LUA_OK else { return raise }  // __tostring failed
            parts.append(Lua.string(L, -1) ?? "")
            sl_pop(L, 1)
        }
        let context = rt.logContext?().map { "\($0): " } ?? ""
        rt.diagnose("\(level): \(context)\(parts.joined(separator: "\t"))")  // stderr by default
        return 0
    }
}
