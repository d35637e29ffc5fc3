import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Reads newline-terminated lines from a file descriptor without blocking past a
/// deadline, so timers can fire while the input is idle and a stop signal is noticed at
/// once. Lines longer than `limit` are skipped whole (and reported), never buffered.
final class LineReader {
    enum Next {
        /// A line (without its newline), valid until the next call.
        case line(UnsafeBufferPointer<UInt8>)
        /// A line longer than the limit was skipped; its first bytes.
        case tooLong(prefix: [UInt8], length: Int)
        /// Nothing arrived before the deadline.
        case idle
        /// A stop signal arrived.
        case stopped
        case end
        case failed(String)
    }

    let fd: Int32
    let limit: Int
    private var buffer: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private var start = 0
    private var end = 0
    private var atEOF = false
    /// Skipping the rest of an oversized line.
    private var skipping = false
    private var skipped = 0
    private var skippedPrefix: [UInt8] = []
    /// The input offset of `buffer[0]`.
    private var base: Int64

    /// Bytes of the input consumed through the last line returned, its newline included:
    /// where a resumed run seeks to (Sources.swift).
    var offset: Int64 { base + Int64(start) }

    /// `offset`: where `fd` is positioned (a resumed run seeks there first).
    init(fd: Int32, limit: Int = 16 << 20, offset: Int64 = 0) {
        self.fd = fd
        self.limit = limit
        base = offset
        capacity = 1 << 16
        buffer = .allocate(capacity: capacity)
    }

    deinit {
        buffer.deallocate()
    }

    /// The next line, waiting at most until `deadline` (monotonic ns; nil: forever).
    func next(deadline: UInt64?) -> Next {
        while true {
            // A complete line in the buffer?
            if end > start, let nl = memchr(buffer + start, 10, end - start) {
                let lineEnd = UnsafeMutablePointer<UInt8>(nl.assumingMemoryBound(to: UInt8.self)) - buffer
                let lineStart = start
                start = lineEnd + 1
                if !skipping, lineEnd - lineStart > limit {  // arrived whole in one read
                    return .tooLong(prefix: Array(UnsafeBufferPointer(start: buffer + lineStart, count: 256)),
                                    length: lineEnd - lineStart)
                }
                if skipping {
                    skipping = false
                    let total = skipped + (lineEnd - lineStart)
                    let prefix = skippedPrefix
                    skipped = 0
                    skippedPrefix = []
                    return .tooLong(prefix: prefix, length: total)
                }
                var stop = lineEnd
                if stop > lineStart, buffer[stop - 1] == 13 { stop -= 1 }  // CRLF
                return .line(UnsafeBufferPointer(start: buffer + lineStart, count: stop - lineStart))
            }
            if atEOF {
                if end > start, !skipping {
                    let line = UnsafeBufferPointer(start: buffer + start, count: end - start)
                    start = end
                    return .line(line)
                }
                if skipping {
                    skipping = false
                    return .tooLong(prefix: skippedPrefix, length: skipped + (end - start))
                }
                return .end
            }
            // Too long already: keep a prefix for the report, drop the rest.
            if skipping || end - start > limit {
                if !skipping {
                    skipping = true
                    skippedPrefix = Array(UnsafeBufferPointer(start: buffer + start, count: min(256, end - start)))
                }
                skipped += end - start
                base += Int64(end)
                start = 0
                end = 0
            }
            if start > 0 {
                base += Int64(start)
                memmove(buffer, buffer + start, end - start)
                end -= start
                start = 0
            }
            if end == capacity {
                let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity * 2)
                grown.update(from: buffer, count: end)
                buffer.deallocate()
                buffer = grown
                capacity *= 2
            }
            switch waitReadable(deadline: deadline) {
            case .ready: break
            case .idle: return .idle
            case .stopped: return .stopped
            }
            let n = read(fd, buffer + end, capacity - end)
            if n > 0 {
                end += n
            } else if n == 0 {
                atEOF = true
            } else if errno != EINTR, errno != EAGAIN {
                return .failed(String(cString: strerror(errno)))
            }
        }
    }

    private enum Wait { case ready, idle, stopped }

    private func waitReadable(deadline: UInt64?) -> Wait {
        let stopFD = sl_stop_fd()
        while true {
            if sl_stop_signal() != 0 { return .stopped }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            var timeout: Int32 = -1
            if let deadline {
                let now = sl_monotonic_ns()
                // Rounded up to whole milliseconds; a deadline however far away (a timer
                // of 1e300 seconds) waits at most Int32.max ms at a time.
                let ns = deadline <= now ? 0 : deadline - now
                timeout = Int32(min(UInt64(Int32.max), ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1)))
            }
            let n = poll(&fds, stopFD >= 0 ? 2 : 1, timeout)
            if n < 0 {
                if errno == EINTR { continue }
                return .ready  // let read() report the problem
            }
            if sl_stop_signal() != 0 { return .stopped }
            if n == 0 { return .idle }
            if fds[0].revents != 0 { return .ready }
        }
    }
}

/// Opening an input (a script or the events) exactly once: the checks run on the
/// descriptor that is then read, so nothing is consumed from a pipe or a FIFO before
/// the reader gets it, and the file checked is the file read.
enum InputFile {
    /// The identity of a regular file (device and inode), to recognise it under another
    /// name (a symbolic or hard link).
    struct Identity: Equatable {
        var device: UInt64
        var inode: UInt64
    }

    /// Opens `path` for reading: the descriptor, or the reason it cannot be read
    /// (`strerror`'s text, as `lua` reports it).
    static func open(_ path: String) -> Result<Int32, Problem> {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(Problem(errno)) }
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFDIR {
            Glibc.close(fd)
            return .failure(Problem(EISDIR))
        }
        return .success(fd)
    }

    /// The identity of the regular file open on `fd` (nil for pipes, terminals, devices).
    static func identity(_ fd: Int32) -> Identity? {
        var st = stat()
        guard fd >= 0, fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        return Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    struct Problem: Error, CustomStringConvertible {
        let code: Int32
        init(_ code: Int32) { self.code = code }
        var description: String { String(cString: strerror(code)) }
    }
}

/// Whether the bytes are valid UTF-8 (ASCII fast path).
func isValidUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
    var i = 0
    let n = bytes.count
    if let base = bytes.baseAddress {  // ASCII, eight bytes at a time
        while i + 8 <= n, UnsafeRawPointer(base + i).loadUnaligned(as: UInt64.self) & 0x8080_8080_8080_8080 == 0 { i += 8 }
    }
    while i < n, bytes[i] < 0x80 { i += 1 }
    if i == n { return true }
    var iterator = bytes[i...].makeIterator()
    var decoder = UTF8()
    while true {
        switch decoder.decode(&iterator) {
        case .scalarValue: continue
        case .emptyInput: return true
        case .error: return false
        }
    }
}
