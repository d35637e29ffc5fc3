import CHiredis
import CLua
import CScopeLua
import ScopeLuaCore

/// Redis' protocol both ways: commands encoded from Lua arguments, replies pushed as Lua
/// values.
enum RedisReplies {
    /// The bytes of a string, status or error reply.
    static func bytes(_ r: UnsafeMutablePointer<redisReply>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: r.pointee.str, count: r.pointee.str == nil ? 0 : r.pointee.len)
    }

    /// The text of an error (or status) reply, for messages.
    static func text(_ r: UnsafeMutablePointer<redisReply>) -> String {
        String(decoding: bytes(r), as: UTF8.self)
    }

    /// Slots a reply needs on the stack: two per level of nested arrays, and hiredis' reader
    /// refuses replies nested more than 7 levels deep (0.14: "No support for nested multi
    /// bulk replies with depth > 7").
    static let stackNeeded: Int32 = 24

    /// Pushes `r` as a Lua value. Status and bulk replies are strings (bytes as they are),
    /// integers integers, arrays sequences (nested ones nested). A nil reply is `nil` at the
    /// top (`top`) and `false` inside an array or a pipeline's list, as in Redis' own Lua
    /// scripting, so that the sequence has no holes; an error reply inside an array (EXEC)
    /// is `{err = message}`. Stack: +1.
    static func push(_ L: LuaState, _ r: UnsafeMutablePointer<redisReply>, top: Bool) {
        switch r.pointee.type {
        case REDIS_REPLY_INTEGER:
            lua_pushinteger(L, lua_Integer(r.pointee.integer))
        case REDIS_REPLY_NIL:
            if top { lua_pushnil(L) } else { lua_pushboolean(L, 0) }
        case REDIS_REPLY_ARRAY:
            let count = r.pointee.elements
            lua_createtable(L, Int32(clamping: count), 0)
            guard count > 0, let elements = r.pointee.element else { return }
            for i in 0..<count {
                if let element = elements[i] {
                    push(L, element, top: false)
                } else {
                    lua_pushboolean(L, 0)
                }
                lua_rawseti(L, -2, lua_Integer(i) + 1)
            }
        case REDIS_REPLY_ERROR:
            pushErrorTable(L, r)
        default:  // REDIS_REPLY_STRING, REDIS_REPLY_STATUS
            let b = bytes(r)
            _ = lua_pushlstring(L, b.baseAddress?.assumingMemoryBound(to: CChar.self), b.count)
        }
    }

    /// `{err = message}`: an error reply where a value is expected (in an array, in a
    /// pipeline's list), as Redis' Lua scripting shows one. Stack: +1.
    static func pushErrorTable(_ L: LuaState, _ r: UnsafeMutablePointer<redisReply>) {
        lua_createtable(L, 0, 1)
        let b = bytes(r)
        _ = lua_pushlstring(L, b.baseAddress?.assumingMemoryBound(to: CChar.self), b.count)
        Lua.setField(L, -2, "err")
    }

    /// A command to send: its name for messages (upper-cased) and its encoding.
    struct Command {
        var name: String
        var bytes: [UInt8]
    }

    /// Encodes the Lua values at `first`...`last` (the command's name, then its
    /// arguments) as one command: strings as their bytes, integers in decimal, floats
    /// with full precision (see `shortest`). Any other value is an argument error naming
    /// its position and type. Stack: 0 / +1.
    static func encode(_ L: LuaState, first: Int32, last: Int32) -> Command? {
        guard last >= first, lua_type(L, first) == LUA_TSTRING else {
            Lua.pushArgError(L, first, "the command's name expected, got \(last >= first ? Lua.typeName(L, first) : "no value")")
            return nil
        }
        var out: [UInt8] = []
        out.reserveCapacity(64)
        append(&out, "*\(last - first + 1)\r\n")
        for idx in first...last {
            switch lua_type(L, idx) {
            case LUA_TSTRING:
                var len = 0
                let p = lua_tolstring(L, idx, &len)
                append(&out, "$\(len)\r\n")
                out.append(contentsOf: UnsafeRawBufferPointer(start: p, count: p == nil ? 0 : len))
            case LUA_TNUMBER:
                let text: String
                if lua_isinteger(L, idx) != 0 {
                    text = String(lua_tointegerx(L, idx, nil))
                } else {
                    text = shortest(lua_tonumberx(L, idx, nil))
                }
                append(&out, "$\(text.utf8.count)\r\n\(text)")
            default:
                Lua.pushArgError(L, idx, "cannot send a \(Lua.typeName(L, idx)) to Redis: arguments are strings and numbers")
                return nil
            }
            append(&out, "\r\n")
        }
        var len = 0
        let p = lua_tolstring(L, first, &len)
        // The name as messages show it: at most 64 bytes of it.
        let name = String(decoding: UnsafeRawBufferPointer(start: p, count: p == nil ? 0 : min(len, 64)), as: UTF8.self)
        return Command(name: name.uppercased(), bytes: out)
    }

    /// A float as the shortest of `%.15g`, `%.16g`, `%.17g` that reads back as the same
    /// double: full precision (the server parses exactly this value), without the noise
    /// `%.17g` alone adds (0.1 is sent as `0.1`, not `0.10000000000000001`). Infinities
    /// are `inf` / `-inf`, which Redis reads as such (sorted-set scores).
    static func shortest(_ value: Double) -> String {
        var buffer = [UInt8](repeating: 0, count: 40)
        var text = ""
        for digits in [15, 16, 17] {
            let n = buffer.withUnsafeMutableBufferPointer { buf in
                withVaList([digits, value]) {
                    vsnprintf(buf.baseAddress.map { UnsafeMutableRawPointer($0).assumingMemoryBound(to: CChar.self) }, buf.count, "%.*g", $0)
                }
            }
            guard n > 0, Int(n) < buffer.count else { return "\(value)" }
            text = String(decoding: buffer[..<Int(n)], as: UTF8.self)
            if value.isNaN || strtod(text, nil) == value { break }
        }
        return text
    }

    private static func append(_ out: inout [UInt8], _ text: String) {
        out.append(contentsOf: text.utf8)
    }
}
