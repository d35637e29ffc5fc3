import CLua
import CScopeLua

/// A Lua value converted for Swift callers (tests, the REPL).
public enum LuaValue: Equatable, CustomStringConvertible, Sendable {
    case `nil`
    case boolean(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    /// Tables, functions, userdata and threads, as `tostring` shows them.
    case other(String)

    init(_ L: LuaState, _ idx: Int32) {
        switch lua_type(L, idx) {
        case LUA_TNIL, LUA_TNONE: self = .nil
        case LUA_TBOOLEAN: self = .boolean(lua_toboolean(L, idx) != 0)
        case LUA_TNUMBER:
            if lua_isinteger(L, idx) != 0 {
                self = .integer(lua_tointegerx(L, idx, nil))
            } else {
                self = .number(lua_tonumberx(L, idx, nil))
            }
        case LUA_TSTRING: self = .string(Lua.string(L, idx) ?? "")
        default: self = .other(Lua.describe(L, idx))
        }
    }

    public var description: String {
        switch self {
        case .nil: return "nil"
        case .boolean(let b): return String(b)
        case .integer(let i): return String(i)
        case .number(let d): return String(d)
        case .string(let s): return s
        case .other(let s): return s
        }
    }
}
