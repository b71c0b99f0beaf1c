// A small RFC 4180 CSV reader: comma-separated fields, CRLF or LF record ends, double-quoted fields that
// may hold commas, quotes (as "") and line breaks. The first record is the header. Every record keeps the
// line it starts on, so errors can name it.

import { DatasetError } from '../errors';

export interface CsvRecord {
  /** 1-based line where the record starts */
  line: number;
  fields: string[];
}

export interface CsvTable {
  header: string[];
  records: CsvRecord[];
}

/**
 * Split CSV text into records of fields (no header handling). Lenient where RFC 4180 is strict about
 * stray quotes inside unquoted fields (kept as text); an unterminated quoted field is an error.
 * @example parseCsvRecords('a,b\r\n"x, ""y""",2\n') // [{ line: 1, fields: ['a', 'b'] }, { line: 2, fields: ['x, "y"', '2'] }]
 */
export function parseCsvRecords(text: string, file = '<csv>'): CsvRecord[] {
  const records: CsvRecord[] = [];
  let fields: string[] = [];
  let field = '';
  let line = 1;
  let recordLine = 1;
  let i = 0;
  const n = text.length;
  const endRecord = () => {
    fields.push(field);
    // a blank line is no record
    if (!(fields.length === 1 && fields[0] === '')) records.push({ line: recordLine, fields });
    fields = [];
    field = '';
  };
  while (i < n) {
    const c = text[i];
    if (c === '"' && field === '') {
      // quoted field: runs to the next lone quote
      const startLine = line;
      i++;
      for (;;) {
        if (i >= n) {
          throw new DatasetError(`${file}: line ${startLine}: a quoted field is never closed (no matching '"' before the end ` +
            'of the file). Close the quote, or double quotes inside a field ("" for ").');
        }
        const q = text[i];
        if (q === '"') {
          if (text[i + 1] === '"') { field += '"'; i += 2; continue; }
          i++;
          break;
        }
        if (q === '\n') line++;
        field += q;
        i++;
      }
      continue;
    }
    if (c === ',') { fields.push(field); field = ''; i++; continue; }
    if (c === '\r' || c === '\n') {
      endRecord();
      i += c === '\r' && text[i + 1] === '\n' ? 2 : 1;
      line++;
      recordLine = line;
      continue;
    }
    field += c;
    i++;
  }
  if (field !== '' || fields.length > 0) endRecord();
  return records;
}

/**
 * Parse CSV text with a header row. Header names must be non-empty and distinct.
 * @example parseCsv('instruction,output\nhi,hello\n').records[0].fields // ['hi', 'hello']
 */
export function parseCsv(text: string, file = '<csv>'): CsvTable {
  const all = parseCsvRecords(text, file);
  if (all.length === 0) throw new DatasetError(`${file} has no header row: the first line must name the columns (e.g. instruction,input,output).`);
  const header = all[0].fields.map((h) => h.trim());
  const seen = new Set<string>();
  header.forEach((h, k) => {
    if (h === '') throw new DatasetError(`${file}: line ${all[0].line}: column ${k + 1} of the header has no name; name every column.`);
    if (seen.has(h)) throw new DatasetError(`${file}: line ${all[0].line}: the header names column "${h}" twice; column names must be distinct.`);
    seen.add(h);
  });
  return { header, records: all.slice(1) };
}
