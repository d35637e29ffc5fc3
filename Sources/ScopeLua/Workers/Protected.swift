#if canImport(Glibc)
import Glibc
#endif

/// A value shared between threads, used under a pthread mutex. Why not the standard
/// library's `Mutex`: on Linux it locks with futexes ThreadSanitizer cannot see, so every
/// access under it is reported as a race, and the sanitizer stops telling real races from
/// these; a pthread mutex it understands.
package final class Protected<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    package init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    package func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
