import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// Scale values that are valid numbers but cannot be right: subnormal scales are refused, and
/// scales far outside what post-RoPE K / V ranges allow load with a warning naming the layer.
@Suite("kv_cache_scales.json: implausible scales")
struct ScalePlausibilityTests {
    @Test("a subnormal scale is refused naming rank and layer")
    func subnormalRefused() {
        let dir = tempDir()
        let path = writeFile(dir, "s.json", ScaleFileTests.file(ranks: ["0": ScaleFileTests.layers(["0.5", "1e-40", "0.5"])]))
        do {
            _ = try KVScales.load(path: path, expectedModelType: "gemma3", numLayers: 3, numKVHeads: 1)
            Issue.record("a subnormal scale was accepted")
        } catch let e as KvantError {
            #expect(e.reason == .invalidArgument)
            #expect(e.message.contains(path))
            #expect(e.message.contains("rank 0 layer 1"))
            #expect(e.message.contains("subnormal"))
        } catch { Issue.record("unexpected error \(error)") }
    }

    @Test("huge and tiny scales load with one warning per layer naming it; plausible ones warn nothing")
    func implausibleWarned() throws {
        let dir = tempDir()
        let path = writeFile(dir, "s.json", ScaleFileTests.file(ranks: ["0": ScaleFileTests.layers(["1e30", "0.02", "1e-30", "999"])]))
        let s = try KVScales.load(path: path, expectedModelType: "gemma3", numLayers: 4, numKVHeads: 1)
        #expect(s.warnings.count == 2)
        #expect(s.warnings.contains { $0.contains("layer 0:") && $0.contains("stored as 0") })
        #expect(s.warnings.contains { $0.contains("layer 2:") && $0.contains("clipped") })
        #expect(!s.warnings.contains { $0.contains("layer 1:") || $0.contains("layer 3:") })
        #expect(s.warnings.allSatisfy { $0.contains("scaling_factor (K and V)") }, "\(s.warnings)")
    }

    @Test("issue 11: with separate K/V scales each warning names K or V, and an implausible shared scaling_factor (vLLM's) is warned about")
    func implausibleSeparateKV() throws {
        let dir = tempDir()
        let text = #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"0": 0.5, "1": 5000}}, "k_scaling_factor": {"0": {"0": 1e-9, "1": 0.5}}, "v_scaling_factor": {"0": {"0": 0.5, "1": 0.5}}}}"#
        let s = try KVScales.load(path: writeFile(dir, "kv.json", text), expectedModelType: "gemma3", numLayers: 2, numKVHeads: 1)
        #expect(s.warnings.count == 2, "\(s.warnings)")
        #expect(s.warnings.contains { $0.contains("layer 0: k_scaling_factor (K) 1e-09") && $0.contains("clipped") }, "\(s.warnings)")
        #expect(s.warnings.contains { $0.contains("layer 1: scaling_factor (K and V in vLLM") && $0.contains("stored as 0") }, "\(s.warnings)")
        #expect(!s.warnings.contains { $0.contains("v_scaling_factor") })
    }

    @Test("a pool larger than the memory available is refused before anything is allocated")
    func poolOverMemoryRefused() {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 64, dtype: .fp16)
        do {
            _ = try KVCachePool(spec: spec, byteBudget: 1 << 50)
            Issue.record("a 1 PiB pool was accepted")
        } catch let e as KvantError {
            #expect(e.reason == .resourceExhausted)
            #expect(e.message.contains("\(1 << 50)"))
        } catch { Issue.record("unexpected error \(error)") }
    }
}

@Suite("kv_cache_scales.json: duplicate keys")
struct ScaleDuplicateKeyTests {
    @Test("a layer or a TP rank given twice is refused naming the key and where")
    func duplicatesRefused() {
        let dir = tempDir()
        let layerTwice = #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"0": 0.3, "1": 0.3, "1": 5.0}}}}"#
        let rankTwice = #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"0": 0.3, "1": 0.3}, "0": {"0": 0.5}}}}"#
        for (name, text, key, place) in [("l.json", layerTwice, "1", "'scaling_factor' → '0'"), ("r.json", rankTwice, "0", "'kv_cache' → 'scaling_factor'")] {
            let path = writeFile(dir, name, text)
            do {
                _ = try KVScales.load(path: path, expectedModelType: "gemma3", numLayers: 2, numKVHeads: 1)
                Issue.record("\(name): a duplicated key was accepted")
            } catch let e as KvantError {
                #expect(e.reason == .invalidArgument)
                #expect(e.message.contains(path))
                #expect(e.message.contains("key '\(key)' appears twice"), "\(e.message)")
                #expect(e.message.contains(place), "\(e.message)")
            } catch { Issue.record("unexpected error \(error)") }
        }
        // The same keys in different objects are fine.
        let ok = writeFile(dir, "ok.json", #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"0": 0.3, "1": 0.3}, "1": {"0": 0.3, "1": 0.4}}}}"#)
        #expect((try? KVScales.load(path: ok, expectedModelType: "gemma3", numLayers: 2, numKVHeads: 1)) != nil)
    }
}
