import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Where a pipeline's events come from (docs/ARCHITECTURE.md, "Sources and sinks").
///
/// A source says where it is after each raw event it handed out (`position`), what it
/// is (`identity`, so that a checkpoint is never resumed over another input), and can
/// start again from a committed position (`resume(from:)`). A source that cannot be
/// read again (stdin, a pipe) has no identity and cannot resume.
protocol EventSource: AnyObject {
    /// For messages: the path, or "stdin".
    var name: String { get }
    /// Where the source is after the last event handed out.
    var position: SourcePosition { get }
    /// What the input is now, or nil for a stream (which cannot be read again).
    func identity() -> SourceIdentity?
    /// Starts reading after `position` (a committed one). Nil, or why it cannot.
    func resume(from position: SourcePosition) -> String?
    /// Everything up to `position` is durable downstream (the barrier committed it): a
    /// source that holds events until they are done (a Redis group's pending entries)
    /// lets them go now. Called after every barrier's commit, never before. Nil, or why
    /// it could not (the events are then delivered again: at-least-once).
    func ack(upTo position: SourcePosition) -> String?
}

extension EventSource {
    /// A file needs no acknowledgement: the checkpoint's position is all it keeps.
    func ack(upTo position: SourcePosition) -> String? { nil }
}

/// A place in an input of lines: the byte offset after a line, and that line's number.
struct SourcePosition: Equatable {
    var offset: Int64 = 0
    var line: Int = 0
}

/// What identifies an input file across runs: device and inode, its size, and a hash of
/// its first bytes (up to `hashLimit`: a file replaced by another at the same path, or
/// rewritten in place, hashes differently).
struct SourceIdentity: Equatable {
    static let hashLimit = 4096
    var device: UInt64
    var inode: UInt64
    var size: Int64
    /// How many bytes the hash covers (fewer than `hashLimit` while the file is short).
    var hashedBytes: Int
    var hash: UInt64

    /// The identity of the regular file open on `fd`, or nil (a pipe, a terminal, a
    /// device, or a read that failed).
    static func of(_ fd: Int32) -> SourceIdentity? {
        var st = stat()
        guard fd >= 0, fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        let size = Int64(st.st_size)
        let count = Int(min(Int64(hashLimit), max(0, size)))
        guard let hash = prefixHash(fd, count: count) else { return nil }
        return SourceIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: size, hashedBytes: count, hash: hash)
    }

    /// FNV-1a (64 bits) of the first `count` bytes of `fd` (read with pread: the reader's
    /// position does not move), or nil if they cannot all be read.
    static func prefixHash(_ fd: Int32, count: Int) -> UInt64? {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress.map { $0 + got }, count - got, off_t(got)) }
            if n > 0 { got += n } else if n < 0, errno == EINTR { continue } else { return nil }
        }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return h
    }

    /// Why the input open on `fd` is not the one this identity was taken of, or nil.
    func mismatch(_ fd: Int32, name: String) -> String? {
        guard let now = SourceIdentity.of(fd) else { return "the input \(name) is no longer a regular file" }
        if now.device != device || now.inode != inode {
            return "the input \(name) is not the file the checkpoint was made with (another file now has its name: device/inode \(device)/\(inode), now \(now.device)/\(now.inode))"
        }
        if now.size < size {
            return "the input \(name) is shorter than when the checkpoint was committed (\(size) bytes, now \(now.size)): it was truncated or rewritten"
        }
        if SourceIdentity.prefixHash(fd, count: hashedBytes) != hash {
            return "the input \(name) changed since the checkpoint was committed (its first \(hashedBytes) bytes differ): it was rewritten"
        }
        return nil
    }
}

/// JSON lines from a file descriptor: a file (which can resume), or stdin, a pipe or a
/// FIFO (which cannot).
final class LineSource: EventSource {
    let fd: Int32
    let name: String
    /// Makes the reader over `fd` from where it is positioned (`--follow` gives one that
    /// follows the file by its name).
    private let makeReader: (Int32) -> LineReader
    /// Made when first read (a following reader needs the outputs open).
    private(set) lazy var reader: LineReader = makeReader(fd)
    /// The number of the line handed out last (the feed loop keeps it current).
    var line = 0

    init(fd: Int32, name: String, makeReader: @escaping (Int32) -> LineReader = { LineReader(fd: $0) }) {
        self.fd = fd
        self.name = name
        self.makeReader = makeReader
    }

    var position: SourcePosition { SourcePosition(offset: reader.offset, line: line) }

    func identity() -> SourceIdentity? { SourceIdentity.of(fd) }

    func resume(from position: SourcePosition) -> String? {
        guard identity() != nil else { return "\(name) is a stream: it cannot be read again" }
        guard lseek(fd, off_t(position.offset), SEEK_SET) == off_t(position.offset) else {
            return "cannot seek \(name) to byte \(position.offset): \(String(cString: strerror(errno)))"
        }
        reader = makeReader(fd)
        line = position.line
        return nil
    }
}
