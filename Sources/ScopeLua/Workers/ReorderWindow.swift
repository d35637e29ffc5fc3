/// Bytes a worker posted, shared by the chunks that point into them.
final class ResultBytes {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}

/// The lines dispatched to workers and not yet written, by dispatch sequence number
/// (docs/ARCHITECTURE.md, "Workers"). `base` is the watermark: every line below it is
/// done and what it produced is written. Ordered, what a line produced waits here until
/// every line before it is done; unordered, it is written as it arrives and only the
/// done marks wait. A fixed ring: memory is bounded by `capacity` lines however slow one
/// worker is (the coordinator stops reading while it is full).
struct ReorderWindow {
    struct Chunk {
        let kind: WorkerResults.Kind
        let bytes: ResultBytes
        let start: Int
        let end: Int
    }

    struct Slot {
        var line = 0
        var done = false
        var chunks: [Chunk] = []
    }

    let capacity: Int
    private var slots: [Slot]
    /// Every sequence number below it is done (and written).
    private(set) var base = 0
    /// The next sequence number to hand out.
    private(set) var next = 0

    init(capacity: Int) {
        self.capacity = capacity
        slots = Array(repeating: Slot(), count: capacity)
    }

    var isFull: Bool { next - base >= capacity }
    /// How many more lines it takes now.
    var room: Int { capacity - (next - base) }

    /// A new line enters the window: its sequence number.
    mutating func add(line: Int) -> Int {
        let seq = next
        slots[seq % capacity] = Slot(line: line)
        next += 1
        return seq
    }

    /// Whether `seq` is still waiting here (not written yet).
    func holds(_ seq: Int) -> Bool { seq >= base && seq < next }

    /// Whether a chunk for line `seq` (its own, or one that comes after it) may be written
    /// at once: every line before it is written, and nothing kept comes before it.
    func writableNow(_ seq: Int, own: Bool) -> Bool {
        if seq < base { return true }
        return own && seq == base && slots[seq % capacity].chunks.isEmpty
    }

    /// Keeps a chunk until line `seq` is written (after what the line itself produced).
    mutating func keep(_ chunk: Chunk, at seq: Int) {
        slots[seq % capacity].chunks.append(chunk)
    }

    /// Whether line `seq` is done (its results are in).
    func isDone(_ seq: Int) -> Bool {
        seq < base || holds(seq) && slots[seq % capacity].done
    }

    mutating func markDone(_ seq: Int) {
        guard holds(seq) else { return }
        slots[seq % capacity].done = true
    }

    /// Writes (through `write`) the chunks of the done lines at the watermark, moving it
    /// up to the first line not done.
    mutating func drain(_ write: (Chunk) -> Void) {
        while base < next, slots[base % capacity].done {
            let i = base % capacity
            for chunk in slots[i].chunks { write(chunk) }
            slots[i] = Slot()
            base += 1
        }
    }

    /// At the end of a run that stopped with lines not done: what the done lines after
    /// them produced is written too (their events were processed and counted), in order.
    mutating func drainAll(_ write: (Chunk) -> Void) {
        for seq in base..<next where slots[seq % capacity].done {
            for chunk in slots[seq % capacity].chunks { write(chunk) }
            slots[seq % capacity].chunks = []
        }
    }

    /// The input lines dispatched and not done, in order.
    var undoneLines: [Int] {
        (base..<next).compactMap { seq in slots[seq % capacity].done ? nil : slots[seq % capacity].line }
    }
}
