#!/usr/bin/env node
// node-postgres (pg) and pg-copy-streams doing what Node.js applications do, against one
// target. tests/compat/test_compat_node.py runs it once through rdsgate-proxy and once
// against PostgreSQL directly and compares the JSON it prints.
//
// Usage: COMPAT_PGPASSWORD=... node compat.js --host H --port P --user U --database D --ca FILE
// Prints one JSON object on stdout; exits 1 with the error on stderr when something fails.
'use strict'

const crypto = require('node:crypto')
const fs = require('node:fs')
const { Readable, Writable } = require('node:stream')
const { pipeline } = require('node:stream/promises')
const { parseArgs } = require('node:util')

const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')

const { values: args } = parseArgs({
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    user: { type: 'string' },
    database: { type: 'string' },
    ca: { type: 'string' },
    'copy-rows': { type: 'string', default: '20000' },
  },
})

function plain(value) {
  // JSON-friendly values: bytea as hex, timestamps as ISO strings.
  if (Buffer.isBuffer(value)) return { hex: value.toString('hex') }
  if (value instanceof Date) return value.toISOString()
  if (Array.isArray(value)) return value.map(plain)
  return value
}

function rows(result) {
  return result.rows.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, plain(v)])))
}

function sha256(data) {
  return crypto.createHash('sha256').update(data).digest('hex')
}

async function copyIn(client, n) {
  // COPY FROM STDIN in small chunks, as an application streaming a file would.
  function* lines() {
    for (let i = 1; i <= n; i++) yield `${i},"name, ""${i}""",${i % 3 === 0 ? '' : `note ${i}`}\n`
  }
  const stream = client.query(copyFrom('COPY nc (id, name, note) FROM STDIN (FORMAT csv)'))
  await pipeline(Readable.from(lines()), stream)
  return stream.rowCount
}

async function copyOut(client) {
  const chunks = []
  const stream = client.query(copyTo('COPY (SELECT * FROM nc ORDER BY id) TO STDOUT (FORMAT csv)'))
  await pipeline(
    stream,
    new Writable({
      write(chunk, _encoding, done) {
        chunks.push(chunk)
        done()
      },
    })
  )
  const data = Buffer.concat(chunks)
  return { rowCount: stream.rowCount, bytes: data.length, sha256: sha256(data), head: data.subarray(0, 120).toString() }
}

async function main() {
  const client = new pg.Client({
    host: args.host,
    port: Number(args.port),
    user: args.user,
    database: args.database,
    password: process.env.COMPAT_PGPASSWORD,
    ssl: { ca: fs.readFileSync(args.ca, 'utf8'), rejectUnauthorized: true },
    connectionTimeoutMillis: 10000,
    application_name: 'rdsgate-compat-node',
  })
  await client.connect()
  const out = {}
  try {
    const simple = await client.query(
      "SELECT 1::int AS one, 'two'::text AS two, NULL::text AS nothing, 1.5::numeric AS num," +
        " '2024-02-29T23:59:59Z'::timestamptz AS at, '\\x00ff'::bytea AS b, ARRAY[1, 2, 3] AS arr," +
        ' \'{"k": [1, "x"]}\'::jsonb AS doc'
    )
    out.query = {
      command: simple.command,
      rowCount: simple.rowCount,
      fields: simple.fields.map((f) => [f.name, f.dataTypeID]),
      rows: rows(simple),
    }

    const params = [40, 2, "ünï'quote", Buffer.from([0, 1, 255]), null]
    const text = 'SELECT $1::int + $2::int AS sum, $3::text AS label, $4::bytea AS data, $5::text IS NULL AS was_null'
    const unnamed = await client.query(text, params)
    const named = []
    for (let i = 0; i < 3; i++) {
      const r = await client.query({ name: 'compat-stmt', text: 'SELECT $1::int * 2 AS doubled', values: [i] })
      named.push(r.rows[0].doubled)
    }
    const prepared = await client.query(
      "SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name = 'compat-stmt'"
    )
    out.params = { rows: rows(unnamed), named, preparedOnServer: prepared.rows[0].n }

    try {
      await client.query('SELECT 1/0')
      out.error = null
    } catch (err) {
      out.error = { code: err.code, message: err.message, severity: err.severity }
    }
    out.afterError = (await client.query("SELECT 'still usable' AS v")).rows[0].v

    const big = Buffer.alloc(2 * 1024 * 1024, 0)
    for (let i = 0; i < big.length; i++) big[i] = i % 251
    const echoed = await client.query('SELECT $1::bytea AS b, md5($1::bytea) AS md5', [big])
    out.large = {
      bytes: echoed.rows[0].b.length,
      equal: Buffer.compare(echoed.rows[0].b, big) === 0,
      md5: echoed.rows[0].md5,
    }

    await client.query('CREATE TEMP TABLE nc (id int PRIMARY KEY, name text, note text)')
    out.copyIn = await copyIn(client, Number(args['copy-rows']))
    out.copyCheck = rows(await client.query('SELECT count(*)::int AS n, count(note)::int AS notes FROM nc'))
    out.copyOut = await copyOut(client)
  } finally {
    await client.end()
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
