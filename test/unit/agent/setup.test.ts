import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import {
  consumeTokenFile,
  defaultNodeName,
  initCluster,
  joinCluster,
  readJoinToken,
} from '../../../src/agent/setup.ts'

const dirs: string[] = []
async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'km1s-unit-'))
  dirs.push(d)
  return d
}
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

describe('cluster setup', () => {
  it('init creates a key readable by its owner only and is idempotent', async () => {
    const dir = await tmp()
    const first = await initCluster(dir, { name: 'pi-a' })
    assert.equal(first.created, true)
    assert.equal((await stat(join(dir, 'cluster.key'))).mode & 0o777, 0o600)
    assert.equal((await stat(join(dir, 'identity.key'))).mode & 0o777, 0o600)
    const fresh = join(dir, 'fresh')
    await initCluster(fresh)
    assert.equal((await stat(fresh)).mode & 0o777, 0o711, 'others may reach the socket inside, not list')
    const again = await initCluster(dir)
    assert.equal(again.created, false)
    assert.equal(again.token, first.token)
    assert.equal(again.peerId, first.peerId)
    assert.equal(again.name, 'pi-a')
    assert.equal(await readJoinToken(dir), first.token)
  })

  it('join stores the same secret and refuses to move a node to another cluster without --force', async () => {
    const a = await initCluster(await tmp())
    const other = await initCluster(await tmp())
    const dir = await tmp()
    await joinCluster(dir, a.token, { name: 'pi-b' })
    assert.equal(await readJoinToken(dir), a.token)
    await assert.rejects(joinCluster(dir, other.token), { code: 'ERR_OTHER_CLUSTER' })
    await joinCluster(dir, other.token, { force: true })
    assert.equal(await readJoinToken(dir), other.token)
  })

  it('a damaged token changes nothing', async () => {
    const a = await initCluster(await tmp())
    const dir = await tmp()
    // One character changed into another of the alphabet (a fixed 'x' was no change in 1 token of 32).
    const typo = a.token[20] === 'x' ? 'y' : 'x'
    await assert.rejects(joinCluster(dir, `${a.token.slice(0, 20)}${typo}${a.token.slice(21)}`), {
      code: 'ERR_TOKEN_DAMAGED',
    })
    assert.equal(existsSync(join(dir, 'cluster.key')), false)
  })

  it('rejects an invalid node name with a sentence naming it', async () => {
    await assert.rejects(initCluster(await tmp(), { name: 'Bad_Name' }), /Invalid node name 'Bad_Name'/)
    assert.equal(defaultNodeName('My.Host.local'), 'my')
    assert.equal(defaultNodeName('___'), 'node')
  })

  it('consumes a token file at first start, and only then', async () => {
    const a = await initCluster(await tmp())
    const dir = await tmp()
    const tokenFile = join(await tmp(), 'km1s-token')
    await writeFile(tokenFile, `${a.token}\n`)
    assert.equal(await consumeTokenFile(dir, tokenFile), true)
    assert.equal(existsSync(tokenFile), false)
    assert.equal(await readJoinToken(dir), a.token)
    await writeFile(tokenFile, 'garbage')
    assert.equal(await consumeTokenFile(dir, tokenFile), false, 'an initialised node ignores the token file')
    assert.equal(await readFile(tokenFile, 'utf8'), 'garbage')
  })
})

describe('moving a node to another cluster', () => {
  it('join --force starts with an empty database, and is refused while an agent holds it', async () => {
    const { Level } = await import('level')
    const a = await initCluster(await tmp())
    const b = await initCluster(await tmp())
    const dir = await tmp()
    await joinCluster(dir, a.token)
    const db = new Level<string, string>(join(dir, 'db'))
    await db.put('records!x', 'old cluster record')
    await assert.rejects(joinCluster(dir, b.token, { force: true }), { code: 'ERR_AGENT_RUNNING' })
    assert.equal(await readJoinToken(dir), a.token, 'nothing changed')
    await db.close()
    await joinCluster(dir, b.token, { force: true })
    assert.equal(await readJoinToken(dir), b.token)
    assert.equal(existsSync(join(dir, 'db')), false, 'the old database is gone')
    await joinCluster(dir, b.token)
  })
})
