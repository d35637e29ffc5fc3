import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Where the reader is in its input: the file (device and inode; nil for a pipe or a
/// terminal) and the byte offset just after the last line delivered (for a checkpoint:
/// reading again from `offset` in that file delivers the next line).
struct InputPosition: Equatable {
    var identity: InputFile.Identity?
    var offset: Int64
}

/// Reads newline-terminated lines from a file descriptor without blocking past a
/// deadline, so timers can fire while the input is idle and a stop signal is noticed at
/// once. Lines longer than `limit` are skipped whole (and reported), never buffered.
/// With `follow` (`--follow`), the end of the file is not the end of the input: see
/// `FollowedFile`.
final class LineReader {
    enum Next {
        /// A line (without its newline), valid until the next call.
        case line(UnsafeBufferPointer<UInt8>)
        /// A line longer than the limit was skipped; its first bytes.
        case tooLong(prefix: [UInt8], length: Int)
        /// Nothing arrived before the deadline.
        case idle
        /// A stop signal arrived, or `onIdle` asked to stop.
        case stopped
        case end
        case failed(String)
    }

    /// The descriptor read (-1 while a followed file does not exist yet).
    private(set) var fd: Int32
    /// Whether the reader closes `fd` (a followed file's descriptors are its own).
    private var owned: Bool
    let limit: Int
    /// Called when the reader is about to wait with nothing to read (the run flushes
    /// its output then); false stops the reading (`.stopped`).
    var onIdle: (() -> Bool)?
    private var buffer: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private var start = 0
    private var end = 0
    private var atEOF = false
    /// Skipping the rest of an oversized line.
    private var skipping = false
    private var skipped = 0
    private var skippedPrefix: [UInt8] = []
    /// Bytes read from `fd` so far, counted from its offset when the reader got it.
    private var readOffset: Int64 = 0
    private var identity: InputFile.Identity?
    /// The file being followed by its name, if any.
    var follow: FollowedFile?
    /// A followed file's replacement, read once the old file is read to its end.
    private var replacement: FollowedFile.Opened?

    /// Bytes of the input consumed through the last line returned, its newline included:
    /// where a resumed run seeks to (Sources.swift). The reader starts from where `fd`
    /// is positioned (a resumed run seeks there first).
    var offset: Int64 { position.offset }

    /// The longest line read whole (16 MiB).
    static let defaultLimit = 16 << 20

    /// A descriptor that ends a wait early (`.idle`) when it becomes readable: the
    /// coordinator's outbox, so that workers' results are written while the input is
    /// idle (-1: none). The reader never reads it.
    var wakeFD: Int32 = -1

    /// `owned`: the reader closes `fd` when it is done with it.
    init(fd: Int32, owned: Bool = false, limit: Int = LineReader.defaultLimit) {
        self.fd = fd
        self.owned = owned
        self.limit = limit
        capacity = 1 << 16
        buffer = .allocate(capacity: capacity)
        adopt(fd: fd, identity: InputFile.identity(fd))
    }

    deinit {
        buffer.deallocate()
        if owned, fd >= 0 { Glibc.close(fd) }
        if let replacement { Glibc.close(replacement.fd) }
    }

    /// The file read and the byte offset after the last line delivered (valid after
    /// each `.line` and `.tooLong`).
    var position: InputPosition {
        InputPosition(identity: identity, offset: readOffset - Int64(end - start))
    }

    /// Starts reading `fd` (nothing of an earlier descriptor stays buffered).
    private func adopt(fd newFD: Int32, identity newIdentity: InputFile.Identity?) {
        fd = newFD
        identity = newIdentity
        let at = newFD >= 0 ? lseek(newFD, 0, SEEK_CUR) : -1
        readOffset = at >= 0 ? Int64(at) : 0
        start = 0
        end = 0
        atEOF = false
        skipping = false
        skipped = 0
        skippedPrefix = []
    }

    /// The next line, waiting at most until `deadline` (monotonic ns; nil: forever).
    func next(deadline: UInt64?) -> Next {
        // A stop ends the reading also while lines read earlier wait in the buffer.
        if sl_stop_signal() != 0 { return .stopped }
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
                    let length = skipped + (end - start)
                    start = end
                    return .tooLong(prefix: skippedPrefix, length: length)
                }
                if let next = replacement {
                    // A rotation: the old file is read to its end (its last line, even
                    // without a newline, was delivered); the new one is read from its start.
                    replacement = nil
                    if owned { Glibc.close(fd) }
                    owned = true
                    adopt(fd: next.fd, identity: next.identity)
                    continue
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
                start = 0
                end = 0
            }
            if start > 0 {
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
            if fd < 0, let follow {
                // Following a file that does not exist yet.
                switch follow.appear() {
                case .opened(let opened):
                    owned = true
                    adopt(fd: opened.fd, identity: opened.identity)
                    continue
                case .missing:
                    switch waitFollowing(deadline: deadline) {
                    case .ready: continue
                    case .idle: return .idle
                    case .stopped: return .stopped
                    }
                case .failed(let message):
                    return .failed(message)
                }
            }
            switch waitReadable(deadline: deadline) {
            case .ready: break
            case .idle: return .idle
            case .stopped: return .stopped
            }
            let n = read(fd, buffer + end, capacity - end)
            if n > 0 {
                end += n
                readOffset += Int64(n)
            } else if n == 0 {
                guard let follow, replacement == nil else {
                    atEOF = true  // the end (or, after a rotation, the old file's end)
                    continue
                }
                switch follow.atEnd(fd: fd, identity: identity, offset: readOffset) {
                case .unchanged:
                    switch waitFollowing(deadline: deadline) {
                    case .ready: continue
                    case .idle: return .idle
                    case .stopped: return .stopped
                    }
                case .truncated:
                    // Read again from the start; an unfinished line read before is gone.
                    _ = lseek(fd, 0, SEEK_SET)
                    adopt(fd: fd, identity: identity)
                case .replaced(let opened):
                    // What was written to the old file before the rename is read first.
                    replacement = opened
                case .failed(let message):
                    return .failed(message)
                }
            } else if errno != EINTR, errno != EAGAIN {
                return .failed(String(cString: strerror(errno)))
            }
        }
    }

    private enum Wait { case ready, idle, stopped }

    /// Waits while a followed file has nothing new: `FollowedFile.interval` (then
    /// `.ready`: look again), or until `deadline` (`.idle`) or a stop. What was written
    /// out is flushed first (`onIdle`).
    private func waitFollowing(deadline: UInt64?) -> Wait {
        if let onIdle, !onIdle() { return .stopped }
        let stopFD = sl_stop_fd()
        let now = sl_monotonic_ns()
        var wake = now &+ FollowedFile.interval
        var idle = false
        if let deadline, deadline <= wake {
            wake = deadline
            idle = true
        }
        while true {
            if sl_stop_signal() != 0 { return .stopped }
            let now = sl_monotonic_ns()
            if now >= wake { return idle ? .idle : .ready }
            let ns = wake - now
            let ms = Int32(min(UInt64(Int32.max), ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1)))
            var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, ms)
            if n < 0, errno != EINTR { return .ready }
            if n > 0, fds[1].revents != 0 { return .idle }
            if n > 0, sl_stop_signal() == 0 { return .ready }  // the stop pipe, but no stop: look again
        }
    }

    private func waitReadable(deadline: UInt64?) -> Wait {
        let stopFD = sl_stop_fd()
        // First a look without waiting: only when nothing is there does `onIdle` run,
        // so a busy input costs no extra call.
        var idleCalled = onIdle == nil
        while true {
            if sl_stop_signal() != 0 { return .stopped }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            var timeout: Int32 = -1
            if !idleCalled {
                timeout = 0
            } else if let deadline {
                let now = sl_monotonic_ns()
                // Rounded up to whole milliseconds; a deadline however far away (a timer
                // of 1e300 seconds) waits at most Int32.max ms at a time.
                let ns = deadline <= now ? 0 : deadline - now
                timeout = Int32(min(UInt64(Int32.max), ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1)))
            }
            let n = poll(&fds, 3, timeout)  // a negative descriptor is ignored
            if n < 0 {
                if errno == EINTR { continue }
                return .ready  // let read() report the problem
            }
            if sl_stop_signal() != 0 { return .stopped }
            if n == 0, !idleCalled {
                idleCalled = true
                if let onIdle, !onIdle() { return .stopped }
                continue
            }
            if n == 0 { return .idle }
            if fds[0].revents != 0 { return .ready }
            if fds[2].revents != 0 { return .idle }
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

    /// The identity of the file at `path` (nil if there is none; with `regularOnly`, also
    /// for anything but a regular file).
    static func identity(atPath path: String, regularOnly: Bool = true) -> Identity? {
        var st = stat()
        guard stat(path, &st) == 0, !regularOnly || st.st_mode & S_IFMT == S_IFREG else { return nil }
        return Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// The identity of the regular file open on `fd` (nil for pipes, terminals, devices).
    static func identity(_ fd: Int32) -> Identity? {
        var st = stat()
        guard fd >= 0, fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        return Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    struct Problem: Error, CustomStringConvertible {
        let code: Int32
        /// Said instead of the system's message for `code`.
        let detail: String?
        init(_ code: Int32, detail: String? = nil) {
            self.code = code
            self.detail = detail
        }
        var description: String { detail ?? String(cString: strerror(code)) }
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
