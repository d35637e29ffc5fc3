import CLua
import CScopeLua
#if canImport(Glibc)
import Glibc
#endif

/// The C API's `lua_State *`, as Swift imports it.
public typealias LuaState = OpaquePointer

/// A Lua-callable Swift function: entered through the C trampoline, returns the number
/// of results or `raise` after pushing an error object. Never raises itself (rule 1).
@usableFromInline package typealias SwiftLuaFunction = @convention(c) (LuaState?) -> Int32

/// Returned by a `SwiftLuaFunction` to make the trampoline raise the object on top.
@usableFromInline package let raise: Int32 = SL_RAISE

/// Thin, non-raising helpers over the C API. Each says what it does to the stack.
@usableFromInline package enum Lua {
    @inlinable package static var registry: Int32 { sl_registryindex() }

    /// Pushes `s` (any bytes, embedded zeros allowed). Stack: +1.
    @inlinable @inline(__always)
    package static func push(_ L: LuaState, _ s: String) {
        var s = s
        s.withUTF8 { buf in
            _ = lua_pushlstring(L, buf.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, buf.count)
        }
    }

    /// Pushes a Swift function through the trampoline. Stack: +1.
    @inlinable package static func push(_ L: LuaState, _ fn: SwiftLuaFunction) {
        sl_pushfunction(L, fn)
    }

    /// The string at `idx` if it is a string (numbers are not converted). Stack: 0.
    @inlinable package static func string(_ L: LuaState, _ idx: Int32) -> String? {
        guard lua_type(L, idx) == LUA_TSTRING else { return nil }
        var len = 0
        guard let p = lua_tolstring(L, idx, &len) else { return nil }
        return String(decoding: UnsafeRawBufferPointer(start: p, count: len), as: UTF8.self)
    }

    /// The value at `idx` as `tostring` would show it, without running metamethods
    /// unless `metamethods` is set (then under a protected call). Stack: 0.
    @usableFromInline package static func describe(_ L: LuaState, _ idx: Int32, metamethods: Bool = true) -> String {
        let idx = lua_absindex(L, idx)
        switch lua_type(L, idx) {
        case LUA_TSTRING:
            return string(L, idx) ?? ""
        case LUA_TNUMBER:
            lua_pushvalue(L, idx)  // convert a copy, never the original slot
            defer { sl_pop(L, 1) }
            var len = 0
            let p = lua_tolstring(L, -1, &len)
            return p.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: len), as: UTF8.self) } ?? "?"
        case LUA_TNIL, LUA_TNONE:
            return "nil"
        case LUA_TBOOLEAN:
            return lua_toboolean(L, idx) != 0 ? "true" : "false"
        default:
            if metamethods {
                lua_pushcclosure(L, sl_tostring, 0)
                lua_pushvalue(L, idx)
                if sl_pcall(L, 1, 1, 0) == LUA_OK, let s = string(L, -1) {
                    sl_pop(L, 1)
                    return s
                }
                sl_pop(L, 1)
            }
            let name = String(cString: lua_typename(L, lua_type(L, idx)))
            return "(\(name): \(String(describing: lua_topointer(L, idx))))"
        }
    }

    /// `type(v)` of the value at `idx`.
    @usableFromInline package static func typeName(_ L: LuaState, _ idx: Int32) -> String {
        String(cString: lua_typename(L, lua_type(L, idx)))
    }

    /// Pushes "where: message" the way `luaL_error` positions a message. Stack: +1.
    @usableFromInline package static func pushError(_ L: LuaState, _ message: String, level: Int32 = 1) {
        luaL_where(L, level)
        let location = string(L, -1) ?? ""
        sl_pop(L, 1)
        push(L, location + message)
    }

    /// Room for `n` more values on the stack: false when the stack cannot grow (past
    /// Lua's limit of a million slots, or out of memory). A C function is only
    /// guaranteed LUA_MINSTACK (20) free slots, and after a call with LUA_MULTRET
    /// none at all, yet the C API does not check pushes: a push past the end writes
    /// past the stack's memory. Stack: 0.
    @inlinable package static func checkStack(_ L: LuaState, _ n: Int32) -> Bool {
        lua_checkstack(L, n) != 0
    }

    /// Room for `n` more values on the stack, or the process ends with a message, like
    /// an allocation failure while Swift holds the state (a Swift frame cannot take
    /// the error Lua would raise). For places a script cannot drive to the limit;
    /// where it can, use `checkStack` and report a Lua error. Stack: 0.
    @inlinable package static func reserve(_ L: LuaState, _ n: Int32, for what: StaticString) {
        guard checkStack(L, n) else {
            sl_eprint("scopelua: cannot grow the Lua stack by \(n) slots for \(what) (stack overflow or out of memory)")
            abort()
        }
    }

    /// Pushes luaL_argerror's wording for argument `arg`. Stack: +1.
    @usableFromInline package static func pushArgError(_ L: LuaState, _ arg: Int32, _ message: String) {
        message.withCString { sl_pushargerror(L, arg, $0) }
    }

    /// Pushes luaL_typeerror's wording ("string expected, got nil"). Stack: +1.
    @usableFromInline package static func pushTypeError(_ L: LuaState, _ arg: Int32, _ expected: String) {
        expected.withCString { sl_pushtypeerror(L, arg, $0) }
    }

    /// Registry field access with a string key: the registry has no metatable, so the
    /// lookup cannot run a metamethod. Stack: +1 / -1.
    @inlinable package static func getRegistryField(_ L: LuaState, _ key: String) {
        push(L, key)
        lua_rawget(L, registry)
    }

    @inlinable package static func setRegistryField(_ L: LuaState, _ key: String) {
        push(L, key)
        lua_rotate(L, -2, 1)
        lua_rawset(L, registry)
    }

    /// `t[key] = v` with a raw set, for a table at `table` and the value on top. Stack: -1.
    @inlinable package static func setField(_ L: LuaState, _ table: Int32, _ key: String) {
        let t = lua_absindex(L, table)
        push(L, key)
        lua_rotate(L, -2, 1)
        lua_rawset(L, t)
    }

    /// Sets field `key` of the table at `table` to a Swift function. Stack: 0.
    @inlinable package static func setFunction(_ L: LuaState, _ table: Int32, _ key: String, _ fn: SwiftLuaFunction) {
        let t = lua_absindex(L, table)
        push(L, fn)
        setField(L, t, key)
    }

    /// Raw `t[key]` for a table at `table`. Stack: +1.
    @discardableResult
    @inlinable package static func rawField(_ L: LuaState, _ table: Int32, _ key: String) -> Int32 {
        let t = lua_absindex(L, table)
        push(L, key)
        return lua_rawget(L, t)
    }

    /// The C function stored in `t[key]` (stock library functions), if any. Stack: 0.
    @inlinable package static func cfunction(_ L: LuaState, _ table: Int32, _ key: String) -> lua_CFunction? {
        rawField(L, table, key)
        defer { sl_pop(L, 1) }
        return lua_tocfunction(L, -1)
    }
}

extension Lua {
    /// The release of the Lua library loaded at run time (`5.4.4`), read from its
    /// `lua_ident`; the header's release (what scopelua was compiled against) only if
    /// that text is not in the form Lua 5.4 writes it.
    package static var libraryRelease: String {
        release(fromIdent: String(cString: sl_lua_ident()))
            ?? "\(LUA_VERSION_MAJOR).\(LUA_VERSION_MINOR).\(LUA_VERSION_RELEASE)"
    }

    /// `5.4.4` from `$LuaVersion: Lua 5.4.4  Copyright (C) 1994-2022 Lua.org, PUC-Rio $...`;
    /// nil for any other text.
    package static func release(fromIdent ident: String) -> String? {
        guard let marker = ident.firstRange(of: "$LuaVersion: Lua ") else { return nil }
        let release = ident[marker.upperBound...].prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        guard let first = release.first, first.isNumber, release.last?.isNumber == true else { return nil }
        return String(release)
    }
}
