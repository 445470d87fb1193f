import CKernels
import Foundation
import KvantCore

// Storage and attention: write one token's K/V in the cache dtype, read it back, attend over a block table.
extension KVCachePool {
    /// Stores K and V of one token for one layer (post-RoPE), converting to the cache dtype.
    /// - Parameters: key, value: `[numKVHeads, headDim]` fp32 each; `position < length(of: sequence)`.
    /// int8_pertoken: scale `amax/127` per (token, KV head) for K and V separately (0 for a zero vector).
    /// Static int8: the block's epoch scales; values beyond ±127·s are clipped and counted per layer.
    /// Writing into a block shared with a forked sequence first copies it (copy-on-write); `reserve`
    /// already does that for the shared, partially filled last block it grows into, so this only
    /// allocates when positions inside the shared range are rewritten (use `truncate` first).
    /// - Returns: true; false when that copy-on-write found no free block — then nothing was written
    ///   (never a write into the other sequence's block).
    /// Preconditions (caller errors): known sequence, layer and position in range.
    @discardableResult
    public func write(layer: Int, sequence: SequenceID, position: Int,
                      key: UnsafePointer<Float>, value: UnsafePointer<Float>) -> Bool {
        precondition(layer >= 0 && layer < spec.numLayers, "KVCachePool.write: layer \(layer) out of range")
        let B = spec.blockSize, H = spec.numKVHeads, D = spec.headDim
        let off = position % B
        lock.lock()
        guard var table = tables[sequence] else {
            lock.unlock(); preconditionFailure("KVCachePool.write: unknown sequence \(sequence)")
        }
        guard position >= 0, position < table.length else {
            lock.unlock(); preconditionFailure("KVCachePool.write: position \(position) outside the reserved length \(table.length)")
        }
        let lb = position / B, gi = groupOfLayer[layer]
        precondition(table.groups[gi][lb] != BlockTable.nullBlock,
                     "KVCachePool.write: position \(position) of layer \(layer) is outside its sliding window (block freed)")
        if mustCopy(table.groups[gi][lb]) {
            guard blocksAvailable(to: table) > 0 else { lock.unlock(); return false }
            copyOnWrite(&table, group: gi, logicalBlock: lb)
            tables[sequence] = table
        }
        let bid = Int(table.groups[gi][lb])
        let slot = layer * numBlocks + bid
        if isStatic && blockEpoch[slot] < 0 {
            // A resumed sequence writes its earlier blocks under the epoch they had (kept alive by its table).
            let planned = lb < table.epochs.count ? Int(table.epochs[lb]) : currentEpoch
            let epoch = epochTables[planned] != nil ? planned : currentEpoch
            blockEpoch[slot] = Int32(epoch)
            let t = epochTables[epoch]!
            for h in 0..<H {
                blockScales[slot * H + h] = t.key[layer * H + h]
                blockVScales[slot * H + h] = t.value[layer * H + h]
            }
        }
        let rec = recorder
        let ring = isInt4 ? residualRing(sequence) : nil
        lock.unlock()

        let blk = blockAddress(layer: layer, block: bid)
        if isInt4 {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * H * D) { buf in
                let kr = buf.baseAddress!, vr = kr + H * D
                kr.update(from: key, count: H * D); vr.update(from: value, count: H * D)
                kv_hadamard(kr, Int32(H * D), Int32(rotationGroup)); kv_hadamard(vr, Int32(H * D), Int32(rotationGroup))
                storeInt4(layer: layer, position: position, ring: ring, blk: blk, kr: kr, vr: vr)
            }
            if let rec {
                for h in 0..<H {
                    let k = key + h * D, v = value + h * D
                    rec.record(layer: layer, head: h, keyAmax: kv_amax(k, Int32(D)), valueAmax: kv_amax(v, Int32(D)),
                               key: k, value: v, count: D)
                }
            }
            return true
        }
        if let sim = simulation {
            // Measurement tool (KVQuantSimulation): store the simulated format's dequantized values (fp32 pool).
            let n = H * D
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 4 * n) { buf in
                let kl = buf.baseAddress!, vl = kl + n, kr = vl + n, vr = kr + n
                simulate(sim, layer: layer, position: position, key: key, value: value, kLow: kl, vLow: vl, kRes: kr, vRes: vr)
                let lowBlk = sim.shadow.map { $0 + (blk - storage) } ?? blk
                for h in 0..<H {
                    let kOff = (h * B + off) * rowBytes, vOff = vOffset + (h * B + off) * rowBytes
                    _ = kv_store_row(dtypeCode, kl + h * D, lowBlk + kOff, Int32(D), 1)
                    _ = kv_store_row(dtypeCode, vl + h * D, lowBlk + vOff, Int32(D), 1)
                    if sim.shadow != nil {
                        _ = kv_store_row(dtypeCode, kr + h * D, blk + kOff, Int32(D), 1)
                        _ = kv_store_row(dtypeCode, vr + h * D, blk + vOff, Int32(D), 1)
                    }
                }
            }
            return true
        }
        var clipped: Int32 = 0
        let G = Int32(rotationGroup)
        for h in 0..<H {
            let k = key + h * D, v = value + h * D
            let kDst = blk + (h * B + off) * rowBytes
            let vDst = blk + vOffset + (h * B + off) * vRowBytes
            var kAmax: Float = -1, vAmax: Float = -1
            switch dtypeCode {
            case Int32(KV_DT_I8_TOKEN):
                withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * D) { buf in
                    // The scale is amax/127 of the row as stored (rotated when G > 1).
                    let kr = buf.baseAddress!, vr = kr + D
                    kr.update(from: k, count: D); vr.update(from: v, count: D)
                    kv_hadamard(kr, Int32(D), G); kv_hadamard(vr, Int32(D), G)
                    let ks = kv_amax(kr, Int32(D)) / 127, vs = kv_amax(vr, Int32(D)) / 127
                    (blk + ksOffset).assumingMemoryBound(to: Float.self)[h * B + off] = ks
                    (blk + vsOffset).assumingMemoryBound(to: Float.self)[h * B + off] = vs
                    _ = kv_store_row(dtypeCode, kr, kDst, Int32(D), ks)
                    _ = kv_store_row(dtypeCode, vr, vDst, Int32(D), vs)
                }
            case Int32(KV_DT_I8_STATIC):
                clipped += kv_store_row(dtypeCode, k, kDst, Int32(D), blockScales[slot * H + h])
                clipped += kv_store_row(dtypeCode, v, vDst, Int32(D), blockVScales[slot * H + h])
            default:
                _ = kv_store_row(dtypeCode, k, kDst, Int32(D), 1)
                _ = kv_store_row(dtypeCode, v, vDst, Int32(D), 1)
            }
            if let rec {
                if kAmax < 0 { kAmax = kv_amax(k, Int32(D)); vAmax = kv_amax(v, Int32(D)) }
                rec.record(layer: layer, head: h, keyAmax: kAmax, valueAmax: vAmax, key: k, value: v, count: D)
            }
        }
        if clipped > 0 { kv_atomic_add_i64(saturation + layer, Int64(clipped)) }
        return true
    }

    /// Reads back (dequantizes) K and V of one token for one layer into `[numKVHeads, headDim]` fp32
    /// buffers: what attention sees, in the model's basis (a rotated int8_pertoken row is rotated back;
    /// `int4_pertoken`: the 4-bit row, which attention reads for positions outside the int8 residual).
    /// For tests and debugging; attention never uses it.
    public func read(layer: Int, sequence: SequenceID, position: Int,
                     key: UnsafeMutablePointer<Float>, value: UnsafeMutablePointer<Float>) {
        precondition(layer >= 0 && layer < spec.numLayers, "KVCachePool.read: layer \(layer) out of range")
        let B = spec.blockSize, H = spec.numKVHeads, D = spec.headDim
        lock.lock()
        guard let table = tables[sequence], position >= 0, position < table.length,
              table.groups[groupOfLayer[layer]][position / B] != BlockTable.nullBlock else {
            lock.unlock(); preconditionFailure("KVCachePool.read: unknown sequence, position \(position) out of range or out of layer \(layer)'s window")
        }
        let bid = Int(table.groups[groupOfLayer[layer]][position / B])
        let slot = layer * numBlocks + bid
        lock.unlock()
        let off = position % B
        let blk = blockAddress(layer: layer, block: bid)
        for h in 0..<H {
            if isInt4 {
                kv_load_row_q4k(blk + (h * B + off) * rowBytes, key + h * D, Int32(D))
                kv_load_row_q4v(blk + vOffset + (h * B + off) * vRowBytes, value + h * D, Int32(D))
                kv_hadamard(key + h * D, Int32(D), Int32(rotationGroup))
                kv_hadamard(value + h * D, Int32(D), Int32(rotationGroup))
                continue
            }
            var ks: Float = 1, vs: Float = 1
            if dtypeCode == Int32(KV_DT_I8_TOKEN) {
                ks = (blk + ksOffset).assumingMemoryBound(to: Float.self)[h * B + off]
                vs = (blk + vsOffset).assumingMemoryBound(to: Float.self)[h * B + off]
            } else if isStatic {
                ks = blockScales[slot * H + h]; vs = blockVScales[slot * H + h]
            }
            kv_load_row(dtypeCode, blk + (h * B + off) * rowBytes, key + h * D, Int32(D), ks)
            kv_load_row(dtypeCode, blk + vOffset + (h * B + off) * rowBytes, value + h * D, Int32(D), vs)
            kv_hadamard(key + h * D, Int32(D), Int32(rotationGroup))     // back to the model's basis
            kv_hadamard(value + h * D, Int32(D), Int32(rotationGroup))
        }
    }

    /// The epoch whose scales a (layer, position) of a sequence was written with (static modes;
    /// -1 when not yet written, out of the layer's window or not a static mode).
    public func epoch(layer: Int, sequence: SequenceID, position: Int) -> Int {
        lock.lock(); defer { lock.unlock() }
        guard isStatic, layer >= 0, layer < spec.numLayers, let table = tables[sequence],
              position >= 0, position < table.length else { return -1 }
        let id = table.groups[groupOfLayer[layer]][position / spec.blockSize]
        return id == BlockTable.nullBlock ? -1 : Int(blockEpoch[layer * numBlocks + Int(id)])
    }

    /// Causal attention of one query position over keys `(position - window, position]` (all of
    /// `0...position` when `window` is nil) of `sequence` in `layer`.
    /// - Parameters:
    ///   - query: `[numHeads, headDim]` fp32; GQA: head h uses KV head `h / (numHeads / numKVHeads)`.
    ///   - scale: multiplies q·k before the softmax (usually `1/sqrt(headDim)`).
    ///   - output: `[numHeads, headDim]` fp32, `Σ softmax(q·k·scale) · v`.
    ///   - threads: for decode (one position at a time), split the keys over up to this many
    ///     threads (`DispatchQueue.concurrentPerform`, at least 256 keys each) and merge the partial
    ///     softmaxes (split-K, "flash-decoding"). Leave at 1 when the caller already runs positions in
    ///     parallel (prefill).
    ///   - numerics: `.fast` (default) or `.llamaCpp` (fp16 cache: llama.cpp's rounding, see `KVAttentionNumerics`).
    /// int8 blocks are read directly with the scale folded in; fp16/bf16 widened in registers. With a
    /// Hadamard-rotated cache (`rotationGroup > 1`) the query is rotated into the cache's basis first and
    /// the output rotated back (the transform is orthogonal and its own inverse).
    /// Thread-safe for concurrent calls. Preconditions: known sequence, `position < length`,
    /// `numHeads` a multiple of numKVHeads, `window >= 1`.
    public func attend(layer: Int, sequence: SequenceID, position: Int, query: UnsafePointer<Float>,
                       numHeads: Int, window: Int?, scale: Float, output: UnsafeMutablePointer<Float>,
                       threads: Int = 1, numerics: KVAttentionNumerics = .fast) {
        precondition(layer >= 0 && layer < spec.numLayers, "KVCachePool.attend: layer \(layer) out of range")
        precondition(numHeads > 0 && numHeads % spec.numKVHeads == 0,
                     "KVCachePool.attend: num_heads \(numHeads) is not a multiple of num_kv_heads \(spec.numKVHeads)")
        lock.lock()
        let table = tables[sequence]
        let ring = isInt4 ? residuals[sequence] : nil
        lock.unlock()
        guard let table, position >= 0, position < table.length else {
            preconditionFailure("KVCachePool.attend: unknown sequence \(sequence) or position \(position) out of range")
        }
        var first = 0
        if let window {
            precondition(window >= 1, "KVCachePool.attend: window \(window) < 1")
            first = max(0, position - window + 1)
        }
        precondition(table.groups[groupOfLayer[layer]][first / spec.blockSize] != BlockTable.nullBlock,
                     "KVCachePool.attend: keys from position \(first) of layer \(layer) were freed (outside its sliding window \(spec.window(layer: layer).map(String.init) ?? "none"))")
        let keys = position - first + 1
        let parts = threads > 1 && numerics == .fast ? min(threads, keys / 256, 64) : 1
        let D = spec.headDim, G = Int32(rotationGroup)
        if let sim = simulation, let shadow = sim.shadow {
            attendSimulatedResidual(table: table, shadow: shadow, layer: layer, first: first, position: position,
                                    query: query, numHeads: numHeads, scale: scale, output: output)
            return
        }
        if G > 1 {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: numHeads * D) { q in
                let qr = q.baseAddress!
                qr.update(from: query, count: numHeads * D)
                kv_hadamard(qr, Int32(numHeads * D), G)
                if isInt4 {
                    attendInt4(table: table, ring: ring, layer: layer, first: first, position: position, threads: parts,
                               query: qr, numHeads: numHeads, scale: scale, output: output)
                    return
                }
                attendInCacheBasis(table: table, layer: layer, first: first, position: position, keys: keys, parts: parts,
                                   query: qr, numHeads: numHeads, scale: scale, output: output, numerics: numerics)
            }
            kv_hadamard(output, Int32(numHeads * D), G)
        } else if isInt4 {
            attendInt4(table: table, ring: ring, layer: layer, first: first, position: position, threads: parts,
                       query: query, numHeads: numHeads, scale: scale, output: output)
        } else {
            attendInCacheBasis(table: table, layer: layer, first: first, position: position, keys: keys, parts: parts,
                               query: query, numHeads: numHeads, scale: scale, output: output, numerics: numerics)
        }
    }

    func attendInCacheBasis(table: BlockTable, layer: Int, first: Int, position: Int, keys: Int, parts: Int,
                                    query: UnsafePointer<Float>, numHeads: Int, scale: Float,
                                    output: UnsafeMutablePointer<Float>, numerics: KVAttentionNumerics) {
        table.groups[groupOfLayer[layer]].withUnsafeBufferPointer { ids in
            var view = kv_layer_view(
                base: UnsafePointer(layerBase(layer).assumingMemoryBound(to: UInt8.self)),
                block_stride: pageStride, v_offset: vOffset, ks_offset: ksOffset, vs_offset: vsOffset,
                static_scales: UnsafePointer(blockScales + (isStatic ? layer * numBlocks * spec.numKVHeads : 0)),
                static_v_scales: UnsafePointer(blockVScales + (isStatic ? layer * numBlocks * spec.numKVHeads : 0)),
                block_ids: ids.baseAddress, dtype: dtypeCode, num_kv_heads: Int32(spec.numKVHeads),
                head_dim: Int32(spec.headDim), block_size: Int32(spec.blockSize),
                use_avx512: useAVX512 ? 1 : 0,
                numerics: numerics == .llamaCpp ? Int32(KV_NUMERICS_LLAMACPP) : Int32(KV_NUMERICS_DEFAULT))
            if parts <= 1 {
                kv_attend(&view, Int32(first), Int32(position), query, Int32(numHeads), scale, output)
                return
            }
            // Part boundaries on block starts where possible, every part non-empty.
            let B = spec.blockSize
            var bounds = [first]
            for p in 1..<parts {
                let b = first + p * keys / parts
                bounds.append(max(b / B * B, bounds[p - 1] + 1))
            }
            bounds.append(position + 1)
            let hd = numHeads * spec.headDim
            let frozen = view
            withUnsafeTemporaryAllocation(of: Float.self, capacity: parts * (hd + 2 * numHeads)) { buf in
                let acc = buf.baseAddress!, m = acc + parts * hd, l = m + parts * numHeads
                DispatchQueue.concurrentPerform(iterations: parts) { p in
                    var v = frozen
                    kv_attend_partial(&v, Int32(bounds[p]), Int32(bounds[p + 1] - 1), query, Int32(numHeads), scale,
                                      acc + p * hd, m + p * numHeads, l + p * numHeads)
                }
                kv_attend_merge(Int32(parts), Int32(numHeads), Int32(spec.headDim), acc, m, l, output)
            }
        }
    }
}

/// How `KVCachePool.attend` rounds.
public enum KVAttentionNumerics: Sendable, Equatable {
    /// Online softmax in fp32 over the cache dtype (the default; FlashAttention-style, one pass).
    case fast
    /// For an fp16 cache on CPUs with AVX-512: llama.cpp's CPU attention with flash attention off, operation for
    /// operation (probabilities rounded to f16, ggml's exp and summation orders), so that logits can be compared with
    /// llama.cpp bit for bit. The query must already be scaled and rounded to f16 (pass scale 1). Other dtypes and
    /// CPUs use `.fast`; one thread per query position (no split-K).
    case llamaCpp

    /// True when `.llamaCpp` is honoured on this CPU.
    public static var llamaCppAvailable: Bool { kv_llamacpp_numerics_available() != 0 }
}
