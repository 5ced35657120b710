// The state tests exercise the store's mechanics — merge, persistence, digests, the order of the checks —
// with free-form values under `tag/` keys. Every key kind now has its owner's value schema (tags:
// artifacts/), so importing this file loosens `tag/` to "any JSON object" for the importing test process
// only (node --test runs each file in its own process). The tag schema itself is tested with artifacts.
import * as z from '../../../src/common/schema.ts'
import { VALUE_SCHEMAS } from '../../../src/state/record.ts'

;(VALUE_SCHEMAS as Record<string, z.ZodMiniType>).tag = z.record(z.string(), z.unknown())
