import ControlProtocol
import Executor
import Foundation
import KVCache
import KvantCore
import KvantDaemon
import Logging
import ModelFormats
import Tokenizers

// Evaluation beside serving: perplexity and calibration of the loaded model, each on a scratch
// KV pool of its own (never the serving pool's blocks).
extension ExecutorModel {
    /// A pool of the current dtype and scales sized for one window of `tokens` tokens (evaluation
    /// runs beside serving and never takes the serving pool's blocks).
    private func scratchPool(tokens: Int) throws -> KVCachePool {
        let (_, dtype, scales) = current()
        let spec = model.config.kvCacheSpec(dtype: dtype, blockSize: blockSize)
        // One sequence at a time, windows of `tokens` run in the session's micro-batches (512): an int4_pertoken pool
        // also holds one residual ring sized for them (`residualReserveBytes`, the same chunk, no prefix caching).
        let chunk = session.maxBatch
        return try KVCachePool(spec: spec, byteBudget: spec.bytesPerToken * (tokens + 2 * blockSize)
                                   + KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: 1, prefillChunk: chunk,
                                                                      enablePrefixCaching: false),
                               scales: scales, prefillChunk: chunk, enablePrefixCaching: false, maxNumSeqs: 1)
    }

    func perplexity(path: String, contextLength: Int, control: OperationControl) throws -> PerplexityResult {
        guard contextLength >= 4, contextLength <= maxModelLen else {
            throw KvantError(.invalidArgument, "perplexity: ctx \(contextLength) must be in 4...\(maxModelLen) (max_model_len)")
        }
        let started = Date()
        // The loaded tokenizer, with llama.cpp's file tokenization (BOS, no special-token parsing).
        let tokens = tokenizer.encode(try TextTokenizer.readText(path: path), addSpecial: true, parseSpecial: false)
        let pool = try scratchPool(tokens: contextLength)
        let total = (tokens.count / contextLength) * contextLength
        let result = try PerplexityEvaluator.run(session: session, pool: pool, tokens: tokens, ctx: contextLength,
                                                 isCancelled: { control.isCancelled }) { chunk, _ in
            control.progress(done: (chunk + 1) * contextLength, total: total)
        }
        return PerplexityResult(perplexity: result.perplexity, meanNLL: result.nll / Double(result.count),
                                tokens: result.count, chunks: result.chunks, seconds: Date().timeIntervalSince(started))
    }

    /// Calibrates on the request's text and writes the scale file atomically (`AtomicFileWriter`: no
    /// symlink followed, the target untouched until the rename). The temporary file is created before
    /// any compute, so an unwritable destination fails at once. The daemon's policy (`allowed_dirs`,
    /// never overwriting a file that is not a scale file) is checked before this, by the request handler.
    func calibrate(_ request: CalibrationRequest, control: OperationControl) throws -> CalibrateResult {
        let started = Date()
        let text = try request.textPath.map(TextTokenizer.readText(path:)) ?? CalibrationSample.text
        let source = request.textPath.map { "'\($0)'" } ?? "the built-in calibration sample"
        guard request.numTokens >= 16 else {
            throw KvantError(.invalidArgument, "calibrate: num_tokens \(request.numTokens) is too few; at least 16 are needed")
        }
        var tokens = tokenizer.encode(text, addSpecial: true, parseSpecial: false)
        let available = tokens.count
        if tokens.count > request.numTokens { tokens.removeLast(tokens.count - request.numTokens) }
        guard tokens.count >= 16 else {
            throw KvantError(.invalidArgument, "calibrate: \(source) gives \(tokens.count) tokens; at least 16 are needed")
        }
        // Fail on an unwritable output before spending minutes on the model.
        let output = request.outputPath
        let file = try AtomicFileWriter(path: output, method: "calibrate")
        defer { file.discard() }
        let result: KVCalibrator.Result
        do {
            result = try KVCalibrator.run(
                session: session, tokens: tokens, window: min(512, maxModelLen), perHead: request.perHead,
                method: request.percentile.map { $0 < 100 ? .percentile($0) : .max } ?? KVCalibrator.defaultMethod,
                separateKV: request.separateKV, isCancelled: { control.isCancelled }, progress: { control.progress(done: $0, total: $1) })
        } catch let e as KvantError where e.reason == .cancelled {
            throw KvantError(.cancelled, "calibrate: \(e.message); '\(output)' was not written")
        }
        let data = try result.scales.encode(modelType: model.config.architecture.rawValue, tpSize: request.tpSize,
                                            perHead: request.perHead)
        // Written beside the target and renamed over it: a cancelled or failed run never leaves a partial file.
        try file.commit(Array(data))
        // Read the file back with the rules reload-scales uses: what was written is what will load.
        let written = try loadScales(path: output)
        logger.notice("calibrated KV scales", metadata: ["output": "\(output)", "tokens": "\(result.tokens)",
                                                         "source": "\(source)"])
        var report = Self.report(written, epoch: nil)
        // Worth saying when the user chose the text or the count; the built-in sample under the default count is expected.
        if available < request.numTokens, request.textPath != nil || request.numTokens != CalibrationRequest.defaultNumTokens {
            report.warnings.append("calibrated on all \(available) tokens of \(source), fewer than num_tokens \(request.numTokens)")
        }
        return CalibrateResult(output: output, tokens: result.tokens, seconds: Date().timeIntervalSince(started),
                               scales: report)
    }
}
