import KvantCore

/// The methods of the control protocol; the raw value is the wire name and the `kvantctl`
/// subcommand (kebab-case).
public enum RPCMethod: String, CaseIterable, Sendable {
    case loadModel = "load-model"
    case unloadModel = "unload-model"
    case health
    case version
    case setKVDType = "set-kv-dtype"
    case reloadScales = "reload-scales"
    case stats
    case generate
    case tokenize
    case perplexity
    case calibrate
    case scalesShow = "scales-show"
    case scalesValidate = "scales-validate"
    case cancel
    case drain

    /// Methods that change the daemon's state or read files; allowed only for root, the
    /// daemon's own uid and members of the configured socket group. The rest
    /// (`health`, `version`, `stats`, `tokenize`, `scales-show`, `cancel` of one's own
    /// request) are open to anyone who can connect.
    public var isMutating: Bool {
        switch self {
        case .health, .version, .stats, .tokenize, .scalesShow, .cancel: return false
        case .loadModel, .unloadModel, .setKVDType, .reloadScales, .generate, .perplexity,
             .calibrate, .scalesValidate, .drain: return true
        }
    }
}

/// Notifications the daemon sends while a request runs; `params.id` is the request's id.
public enum NotificationMethod: String, Sendable {
    /// One generated token of a `generate` with `stream: true`: `GenerateTokenNotification`.
    case generateToken = "generate.token"
    /// Progress of a `calibrate`: `ProgressNotification` (tokens).
    case calibrateProgress = "calibrate.progress"
    /// Progress of a `perplexity`: `ProgressNotification` (tokens).
    case perplexityProgress = "perplexity.progress"
}

/// Params of methods that take none (`{}` or absent).
public struct EmptyParams: Codable, Equatable, Sendable {
    public init() {}
}
