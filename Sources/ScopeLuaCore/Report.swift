import CScopeLua

/// The run report: what `--report` prints (and, with pipelines, `p:run` returns). The
/// core's part: resource counts and timer statistics; the engine adds the pipeline's.
public enum Report {
    /// A readable table of resource counts and timer statistics.
    public static func text(_ rt: Runtime) -> String {
        let c = rt.resourceCounts
        var lines = ["scopelua report"]
        lines.append("  resources  acquired \(c.acquired)  released \(c.released) (by handle \(c.releasedByHandle), by scope end \(c.releasedByScope), leaked \(c.leaked))  release errors \(c.releaseErrors)")
        let timers = rt.timers
        if !timers.isEmpty {
            let width = max(5, timers.map(\.label.count).max() ?? 5)
            lines.append("  timers     " + pad("label", width) + "     count      total        p50        p99        max")
            for t in timers {
                lines.append("             " + pad(t.label, width) + " " + right(String(t.count), 9)
                    + " " + right(seconds(t.total), 10) + " " + right(seconds(t.p50), 10)
                    + " " + right(seconds(t.p99), 10) + " " + right(seconds(t.max), 10))
            }
        }
        return lines.joined(separator: "\n")
    }

    /// `1.25ms`, `830ns`, `2.40s`.
    /// A size in bytes as people read it: `512 B`, `64 KiB`, `1.5 MiB`, `2 GiB`.
    package static func bytes(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n), unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        let tenths = Int((value * 10).rounded())
        let text = tenths % 10 == 0 ? String(tenths / 10) : "\(tenths / 10).\(tenths % 10)"
        return "\(text) \(units[unit])"
    }

    /// A size as people write it: bytes, or a number with K, M, G (KB, MB, GB, KiB, MiB,
    /// GiB: all powers of 1024), spaces and case ignored (`64MB`, `512 MiB`, `2g`). Nil
    /// when it is none, or not below 1e18 bytes.
    package static func parseBytes(_ text: String) -> Int? {
        let units: [(String, Int)] = [("KIB", 1 << 10), ("MIB", 1 << 20), ("GIB", 1 << 30), ("KB", 1 << 10), ("MB", 1 << 20),
                                      ("GB", 1 << 30), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("B", 1)]
        let upper = text.uppercased().filter { $0 != " " }
        var number = upper, scale = 1
        for (suffix, factor) in units where upper.hasSuffix(suffix) {
            number = String(upper.dropLast(suffix.count))
            scale = factor
            break
        }
        guard let value = Double(number), value.isFinite, value >= 0, value * Double(scale) < 1e18 else { return nil }
        return Int(value * Double(scale))
    }

    package static func seconds(_ s: Double) -> String {
        func fixed(_ v: Double, _ digits: Int) -> String {
            let scale = Double([1, 10, 100, 1000][min(digits, 3)])
            let r = (v * scale).rounded() / scale
            var text = String(r)
            if let dot = text.firstIndex(of: ".") {
                let decimals = text.distance(from: dot, to: text.endIndex) - 1
                if decimals < digits { text += String(repeating: "0", count: digits - decimals) }
            } else if digits > 0 {
                text += "." + String(repeating: "0", count: digits)
            }
            return text
        }
        if s >= 1 { return fixed(s, 2) + "s" }
        if s >= 1e-3 { return fixed(s * 1e3, 2) + "ms" }
        if s >= 1e-6 { return fixed(s * 1e6, 2) + "us" }
        guard s.isFinite else { return "\(s)s" }
        return String(Int((s * 1e9).rounded())) + "ns"
    }

    /// `5102 events/s` as a whole number (never a trap on a huge rate).
    package static func rate(_ perSecond: Double) -> String {
        perSecond.isFinite && perSecond < 1e15 ? String(Int(perSecond.rounded())) : "\(perSecond)"
    }

    package static func pad(_ s: String, _ n: Int) -> String {
        s.count >= n ? s : s + String(repeating: " ", count: n - s.count)
    }

    package static func right(_ s: String, _ n: Int) -> String {
        s.count >= n ? s : String(repeating: " ", count: n - s.count) + s
    }
}

/// Writing to the process's stderr (C's `stderr`, which Swift 6 code cannot name).
public enum StandardError {
    public static func write(line: String) {
        sl_eprint(line)
    }

    /// Flushes C's stdout (shared with Lua's print).
    public static func flushStdout() {
        fflush(sl_stdout())
    }
}
