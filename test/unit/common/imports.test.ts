// Imports that cost every agent memory it cannot give back (docs/benchmarks.md, mesh): an ESM import of
// node:http reads all its exports, and its lazy WebSocket export loads Node's bundled undici (~5 MB RSS);
// node:https and node:http2 (dns2's index pulls both in) cost more. src/common/http.ts is the one way in.
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { describe, it } from 'node:test'

const SRC = join(import.meta.dirname, '../../../src')

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  )
}

describe('src imports', () => {
  it('never value-imports node:http, node:https, node:http2 or dns2', () => {
    const bad: string[] = []
    for (const file of sources(SRC)) {
      const text = readFileSync(file, 'utf8')
      for (const m of text.matchAll(/^import\s+(?!type\b)[^']*?from\s+'(node:https?2?|https?2?|dns2)'/gm))
        bad.push(`${relative(SRC, file)}: ${m[0].replace(/\s+/g, ' ')}`)
    }
    assert.deepEqual(bad, [], 'use src/common/http.ts (createRequire) instead')
  })
})
