#if canImport(Glibc)
import Glibc
#endif
import CKernels
import Dispatch
import KvantCore

/// A 2-D weight tensor kept in its GGUF block format (usually a view into the mmap'd file; no fp32 copy).
///
/// Shape `[rows, cols]` row-major, i.e. GGUF `dims = [cols, rows]` (ne0 = cols is the row length).
/// Supported types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K (ggml block layouts,
/// `ggml-common.h`).
public struct WeightMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    /// Bytes of one row (`cols / blockSize * bytesPerBlock`).
    public let rowBytes: Int
    public let base: UnsafeRawPointer
    /// How the rows are laid out in memory.
    public let layout: Layout

    /// The byte layout of a weight matrix.
    public enum Layout: Sendable, Equatable {
        /// ggml's: row after row, each `rowBytes` of consecutive blocks (the GGUF file's layout).
        case ggml
        /// Q8_0 or Q5_0 rows repacked 16 at a time for AVX-512 VNNI (`kvant_repack_q0x16`, Sources/CKernels/q0x16.c):
        /// the same bytes in total, 16 rows' blocks interleaved so one instruction multiplies 16 rows. Rows % 16 == 0.
        case x16
    }

    /// The weight types the kernels handle.
    public static let supportedTypes: Set<GGMLType> = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

    /// Wraps `bytes` as a `[rows, cols]` matrix of `type`.
    /// - Throws: `KvantError(.invalidArgument)` naming `name` when the type is unsupported, `cols` is not a whole
    ///   number of blocks, or `bytes` is not exactly `rows × rowBytes` long.
    ///   With `layout: .x16` the bytes must already be repacked (`repackX16`); it needs Q8_0 or Q5_0 and rows % 16 == 0.
    public init(name: String, type: GGMLType, rows: Int, cols: Int, bytes: UnsafeRawBufferPointer, layout: Layout = .ggml) throws {
        guard WeightMatrix.supportedTypes.contains(type) else {
            throw KvantError(.invalidArgument, "tensor '\(name)': weight type \(type) is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)")
        }
        guard rows > 0, cols > 0, let rb = type.byteCount(elements: cols) else {
            throw KvantError(.invalidArgument, "tensor '\(name)': row length \(cols) is not a whole number of \(type) blocks of \(type.blockSize)")
        }
        let (total, overflow) = rb.multipliedReportingOverflow(by: rows)
        guard !overflow, total == bytes.count, let p = bytes.baseAddress else {
            throw KvantError(.invalidArgument, "tensor '\(name)': \(bytes.count) bytes of data, expected \(rows) rows × \(rb) bytes")
        }
        if layout == .x16, !WeightMatrix.canRepackX16(type: type, rows: rows, cols: cols) {
            throw KvantError(.invalidArgument, "tensor '\(name)': the x16 layout needs Q8_0 or Q5_0 rows in groups of 16 (\(type), \(rows) rows)")
        }
        self.layout = layout
        self.type = type
        self.rows = rows
        self.cols = cols
        self.rowBytes = rb
        self.base = p
    }

    /// True when the int8-activation fast path exists (block types); F32/F16/BF16 use fp32 activations.
    public var hasInt8Path: Bool {
        kvant_type_has_q8a_path(Int32(type.rawValue)) != 0 && cols % 32 == 0
            && (QuantizedActivations.format(for: type) != KVANT_ACT_Q8_K || cols % 256 == 0)
    }

    /// Pointer to row `r` (0 ≤ r < rows) of a `.ggml` layout (a repacked matrix has no contiguous rows).
    @inline(__always) public func row(_ r: Int) -> UnsafeRawPointer {
        precondition(layout == .ggml, "row pointer of a repacked matrix")
        return base + r * rowBytes
    }

    /// Dequantizes row `r` into `out[0..<cols]` (reference path, ggml's `dequantize_row_*`; the same floats from a
    /// repacked matrix).
    public func dequantizeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(r >= 0 && r < rows, "row out of range")
        switch layout {
        case .ggml: _ = kvant_dequantize_row(Int32(type.rawValue), row(r), out, Int64(cols))
        case .x16: _ = kvant_dequantize_row_q0x16(Int32(type.rawValue), base, Int64(cols), Int64(r), out)
        }
    }

    /// True when this CPU has the kernels of the `.x16` layout (AVX-512 VNNI) and `KVANT_NO_REPACK` is not `1`: the
    /// model loader repacks Q8_0 and Q5_0 weights only then.
    public static var x16Available: Bool {
        kvant_q0x16_available() != 0 && getenv("KVANT_NO_REPACK").map { String(cString: $0) } != "1"
    }

    /// True when `repackX16` accepts a `[rows, cols]` matrix of `type` (Q8_0 or Q5_0, rows in groups of 16).
    public static func canRepackX16(type: GGMLType, rows: Int, cols: Int) -> Bool {
        (type == .q8_0 || type == .q5_0) && rows % 16 == 0 && rows > 0 && cols % 32 == 0 && cols > 0
    }

    /// Repacks ggml-layout Q8_0 or Q5_0 rows in place into the `.x16` layout (same size).
    /// - Throws: `KvantError(.invalidArgument)` naming `name` when `canRepackX16` is false or the size is not
    ///   `rows × cols/32 ×` the block size; `.resourceExhausted` when the 16-row copy cannot be allocated.
    public static func repackX16(name: String, type: GGMLType, rows: Int, cols: Int, bytes: UnsafeMutableRawBufferPointer) throws {
        guard canRepackX16(type: type, rows: rows, cols: cols), let rb = type.byteCount(elements: cols),
              bytes.count == rows * rb, let p = bytes.baseAddress else {
            throw KvantError(.invalidArgument, "tensor '\(name)': cannot repack \(rows) × \(cols) \(type) (\(bytes.count) bytes) into groups of 16 rows")
        }
        guard kvant_repack_q0x16(Int32(type.rawValue), p, rb, Int64(rows), Int64(cols), p) == 0 else {
            throw KvantError(.resourceExhausted, "tensor '\(name)': no memory for the 16-row copy of the repack")
        }
    }

    /// Dequantizes row `r` into a new array.
    public func dequantizedRow(_ r: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: cols) { buf, n in
            dequantizeRow(r, into: buf.baseAddress!)
            n = cols
        }
    }
}

/// Activations quantized to int8 blocks of 32 (`kvant_block_q8a`) for the int8 path, in the format the weight type
/// needs (`kvant_act_format`: llama.cpp's Q8_0 for Q4_0/Q5_0/Q8_0 weights, Q8_K for K-quants, see kvant_quants.h).
public struct QuantizedActivations {
    public private(set) var blocks: [kvant_block_q8a] = []
    public private(set) var count = 0
    public private(set) var cols = 0
    public private(set) var format: Int32 = -1

    public init() {}

    /// The activation format of weight type `type` (`KVANT_ACT_*`).
    public static func format(for type: GGMLType) -> Int32 { kvant_act_format(Int32(type.rawValue)) }

    /// Quantizes `count` rows of `cols` floats in `format` (cols % 32 == 0; % 256 for Q8_K).
    public mutating func quantize(_ x: UnsafePointer<Float>, count: Int, cols: Int, format: Int32) {
        precondition(cols % (format == KVANT_ACT_Q8_K ? 256 : 32) == 0)
        let nb = count * cols / 32
        if blocks.count < nb { blocks = [kvant_block_q8a](repeating: kvant_block_q8a(), count: nb) }
        self.count = count
        self.cols = cols
        self.format = format
        blocks.withUnsafeMutableBufferPointer { b in
            let base = b.baseAddress!
            if count >= 8 {
                let chunks = 2
                DispatchQueue.concurrentPerform(iterations: chunks) { c in
                    let lo = count * c / chunks, hi = count * (c + 1) / chunks
                    if hi > lo {
                        _ = kvant_quantize_row_act(format, x + lo * cols, base + lo * cols / 32, Int64((hi - lo) * cols))
                    }
                }
            } else {
                _ = kvant_quantize_row_act(format, x, base, Int64(count * cols))
            }
        }
    }
}
