#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value in a shared dictionary: what a Lua value becomes when a script stores it, and
/// what it becomes again when any runtime reads it. Only plain data, never a Lua value
/// (a Lua value belongs to one state, and a state to one thread: ARCHITECTURE.md rule 6,
/// and "Shared dictionaries").
public enum SharedValue: Sendable, Hashable {
    /// A Lua integer (`math.type(v) == "integer"`).
    case integer(Int64)
    /// A Lua float: stays a float, also when it has no fraction (`2.0`).
    case float(Double)
    /// A Lua string: its bytes, exactly (Lua strings need not be UTF-8).
    case string([UInt8])
    case boolean(Bool)

    /// Lua's name of the value's type (`"string"`), for messages.
    public var typeName: String {
        switch self {
        case .integer, .float: return "number"
        case .string: return "string"
        case .boolean: return "boolean"
        }
    }
}

/// A mutual exclusion lock over a pthread mutex (heap-allocated: a pthread mutex must
/// not move). `Synchronization.Mutex` would need macOS 15; the package supports 13.
final class SharedLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` holding the lock. `body` must not call into Lua (nothing under the
    /// lock may raise or block on another runtime).
    @inline(__always)
    func locked<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// One named dictionary of a `SharedStore` (`shared.dict(name)`): keys are byte strings,
/// values `SharedValue`s. Every operation takes the dictionary's lock for its whole
/// duration, so each is atomic: two runtimes incrementing one key never lose an update.
public final class SharedDictionary: @unchecked Sendable {
    /// The dictionary's name as the script gave it.
    public let name: [UInt8]
    private let lock = SharedLock()
    /// Guarded by `lock`.
    private var entries: [[UInt8]: SharedValue] = [:]

    init(name: [UInt8]) {
        self.name = name
    }

    /// The outcome of `increment`.
    package enum Increment: Equatable {
        /// The new value, now stored.
        case value(SharedValue)
        /// The key holds something that is not a number (nothing changed).
        case notANumber(SharedValue)
        /// Integer plus integer does not fit in 64 bits (nothing changed).
        case overflow(Int64, Int64)
    }

    public subscript(key: [UInt8]) -> SharedValue? {
        lock.locked { entries[key] }
    }

    public subscript(key: String) -> SharedValue? {
        self[Array(key.utf8)]
    }

    /// Stores `value` under `key`; nil deletes the key.
    package func set(_ key: [UInt8], _ value: SharedValue?) {
        lock.locked { entries[key] = value }
    }

    /// Stores `value` only if `key` is absent; whether it did.
    package func add(_ key: [UInt8], _ value: SharedValue) -> Bool {
        lock.locked {
            if entries[key] != nil { return false }
            entries[key] = value
            return true
        }
    }

    /// Deletes `key`; whether it was there.
    package func delete(_ key: [UInt8]) -> Bool {
        lock.locked { entries.removeValue(forKey: key) != nil }
    }

    /// Adds `by` to the number under `key` (`initial` when the key is absent) as Lua adds:
    /// integer + integer stays an integer (an overflow is refused, not wrapped), anything
    /// with a float is a float.
    package func increment(_ key: [UInt8], by: SharedValue, initial: SharedValue) -> Increment {
        lock.locked {
            let current = entries[key] ?? initial
            let sum: SharedValue
            switch (current, by) {
            case (.integer(let a), .integer(let b)):
                let (s, overflow) = a.addingReportingOverflow(b)
                if overflow { return .overflow(a, b) }
                sum = .integer(s)
            case (.integer(let a), .float(let b)): sum = .float(Double(a) + b)
            case (.float(let a), .integer(let b)): sum = .float(a + Double(b))
            case (.float(let a), .float(let b)): sum = .float(a + b)
            default: return .notANumber(current)
            }
            entries[key] = sum
            return .value(sum)
        }
    }

    /// The number of keys.
    public var count: Int {
        lock.locked { entries.count }
    }

    /// The keys, sorted by their bytes (a snapshot: other runtimes may change the
    /// dictionary right after).
    public var keys: [[UInt8]] {
        lock.locked { Array(entries.keys) }.sorted { $0.lexicographicallyPrecedes($1) }
    }
}

/// The dictionaries `shared.dict(name)` opens: one store per run, shared by every runtime
/// created with (a copy of) the same `RuntimeOptions` — the workers of `--workers N` each
/// have their own Lua state and thread but this one store. A dictionary lives as long as
/// the store; releasing a handle to it does not delete its data. Thread-safe.
public final class SharedStore: @unchecked Sendable {
    private let lock = SharedLock()
    /// Guarded by `lock`.
    private var dictionaries: [[UInt8]: SharedDictionary] = [:]

    public init() {}

    /// The dictionary called `name`, created empty on first use.
    public func dictionary(named name: [UInt8]) -> SharedDictionary {
        lock.locked {
            if let d = dictionaries[name] { return d }
            let d = SharedDictionary(name: name)
            dictionaries[name] = d
            return d
        }
    }

    public func dictionary(named name: String) -> SharedDictionary {
        dictionary(named: Array(name.utf8))
    }
}
