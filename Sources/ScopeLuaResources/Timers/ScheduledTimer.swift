import CLua
import CScopeLua
import ScopeLuaCore

/// `timer.every(seconds, fn)` / `timer.after(seconds, fn)` (kind `"timer"`): a callback
/// a running pipeline fires between events, never during a stage call. Owned by the
/// scope that created it (a timer created in a stage's `open` lives as long as the
/// stage); releasing the handle or ending that scope cancels it. The runtime keeps the
/// handle alive while the timer is scheduled, so dropping it does not cancel it.
package final class ScheduledTimer: Resource {
    private(set) var function: Int32
    /// Seconds between firings; nil for a one-shot `after`.
    let interval: Double?
    /// Monotonic nanoseconds of the next firing.
    package var due: UInt64
    /// The scope that created it (alive while the timer is open).
    package unowned(unsafe) let owner: Scope
    var anchor: Int32 = LUA_NOREF
    package var handle: Handle?
    /// How many times it fired (a plain script whose timers never fire is told so).
    var fired = 0

    /// The longest delay or interval, in seconds (about 31 years): longer than any run,
    /// and short enough that its nanoseconds, added to the clock, fit a UInt64 (the
    /// bindings refuse anything outside 0...maxSeconds with a Lua error).
    static let maxSeconds = 1e9

    /// `delay` must be within 0...maxSeconds (anything else counts as maxSeconds: a
    /// conversion out of range would trap).
    init(function: Int32, delay: Double, repeats: Bool, owner: Scope) {
        let delay = delay >= 0 && delay <= Self.maxSeconds ? delay : Self.maxSeconds
        self.function = function
        self.interval = repeats ? delay : nil
        self.due = sl_monotonic_ns() &+ UInt64(delay * 1e9)
        self.owner = owner
        let seconds = delay == delay.rounded() ? String(Int(delay)) : String(delay)
        super.init(label: repeats ? "every \(seconds)s" : "after \(seconds)s")
    }

    /// Pushes the callback. Stack: +1.
    func pushFunction(_ L: LuaState) {
        lua_rawgeti(L, Lua.registry, lua_Integer(function))
    }

    package override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        self.handle = nil
        runtime.timerState.scheduled.removeAll { $0 === self }
        luaL_unref(L, Lua.registry, function)
        luaL_unref(L, Lua.registry, anchor)
        function = LUA_NOREF
        anchor = LUA_NOREF
        return true
    }
}
