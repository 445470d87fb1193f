import ControlProtocol
import Executor
import Foundation
import KVCache
import KvantCore
import KvantDaemon
import Logging
import ModelFormats
import Tokenizers

/// The inference backend over Kvant's own CPU executor: GGUF weights (`Executor.Model`), the
/// GGUF tokenizer, and a paged `KVCachePool` built from the model's KV geometry and the requested
/// `kv_cache_dtype`.
///
/// `set-kv-dtype` policy: the new pool is built beside the old one; sequences already running keep
/// the pool they started on (each holds a reference) and finish there, new sequences use the new
/// pool. The old pool's memory is returned when its last sequence ends, so for that while both
/// budgets are allocated.
public struct ExecutorBackend: InferenceBackend {
    let logger: Logger

    public init(logger: Logger = Logger(label: "kvant.executor")) { self.logger = logger }

    public var name: String { "kvant-cpu" }

    public func loadModel(_ request: ModelLoadRequest, progress: @escaping @Sendable (String) -> Void) throws -> any LoadedModel {
        progress("mapping weights of \((request.path as NSString).lastPathComponent)")
        let model = try Model(path: request.path)
        progress("building the tokenizer")
        let tokenizer = try makeTokenizer(from: model.file)
        progress("allocating the KV cache")
        return try ExecutorModel(model: model, tokenizer: tokenizer, request: request, logger: logger)
    }

    public func validateScales(path: String, for model: (any LoadedModel)?) throws -> ScalesReport {
        guard let model = model as? ExecutorModel else {
            throw KvantError(.failedPrecondition,
                             "scales-validate '\(path)': no model is loaded; a scale file is checked against the loaded model's layers, KV heads and model_type")
        }
        let scales = try model.loadScales(path: path)
        var report = ExecutorModel.report(scales, epoch: nil)
        // The same checks reload-scales makes against the pool in force; for a dtype without
        // static scales the file is only checked against the model, and the report says so.
        let dtype = model.info.kvCacheDType
        if dtype.usesStaticScales {
            try KVCachePool.checkScales(scales, for: model.model.config.kvCacheSpec(dtype: dtype))
        } else {
            report.warnings.append("kv_cache_dtype \(dtype.rawValue) uses no scale file; checked against the model only (it applies after set-kv-dtype \(scales.granularity == .perHead ? "int8_pertensor_perhead" : "int8_pertensor or int8_pertensor_perhead"))")
        }
        return report
    }
}
