import Testing
import KvantCore

@Suite struct KVCacheDTypeTests {
    @Test func flagValuesMatchVLLMSpelling() throws {
        #expect(try KVCacheDType(parsing: "int8_pertoken") == .int8PerToken)
        #expect(try KVCacheDType(parsing: "int8_pertensor_perhead") == .int8PerTensorPerHead)
        #expect(KVCacheDType.auto.resolved == .fp16)
        #expect(KVCacheDType.int8PerTensor.elementBytes == 1)
        #expect(KVCacheDType.bf16.elementBytes == 2)
    }

    @Test func unknownValueNamesTheValidOnes() {
        #expect(throws: KvantError.self) { try KVCacheDType(parsing: "int4") }
        do { _ = try KVCacheDType(parsing: "int4") } catch let e as KvantError {
            #expect(e.reason == .invalidArgument)
            #expect(e.message.contains("int4"))
            #expect(e.message.contains("int8_pertensor_perhead"))
        } catch { Issue.record("unexpected error \(error)") }
    }
}
